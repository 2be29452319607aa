"""Prefill sharing between live slots: the plan (pure bookkeeping), then the backend on the tiny
model, where copied KV must give exactly the tokens computed KV gives."""

from __future__ import annotations

from typing import Any

import torch

from chatstream.adapters.model.shared_prefill import MIN_SHARED_TOKENS, HeldTokens, SharedCopy
from chatstream.core import GenerationParams, PrefillChunk

from .test_transformers_backend import PROMPTS, Harness, encode, reference

torch.set_num_threads(1)

GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0)
PROMPT = tuple(range(100, 100 + 3 * MIN_SHARED_TOKENS))


def chunk(
    slot: int,
    ids: tuple[int, ...],
    *,
    start: int = 0,
    last: bool = True,
    reused: tuple[int, ...] = (),
) -> PrefillChunk:
    return PrefillChunk(
        request_id=slot,
        slot=slot,
        token_ids=ids,
        start=start,
        last=last,
        params=GREEDY,
        reused_ids=reused,
    )


def test_a_prompt_another_slot_holds_is_copied_but_its_last_token() -> None:
    held = HeldTokens(4)
    held.prefilled(chunk(0, PROMPT))
    (shortened,), copies = held.plan_copies([chunk(1, PROMPT)])
    assert copies == (SharedCopy(source=0, target=1, length=len(PROMPT) - 1),)
    assert shortened.token_ids == PROMPT[-1:] and shortened.start == len(PROMPT) - 1
    assert shortened.reused_ids == PROMPT[:-1] and shortened.first
    # A chunk that is not the prompt's last is copied whole.
    (_,), copies = held.plan_copies([chunk(2, PROMPT, last=False)])
    assert copies[0].length == len(PROMPT)


def test_short_overlaps_are_computed_and_writers_never_lend() -> None:
    held = HeldTokens(4)
    held.prefilled(chunk(0, PROMPT))
    short = (*PROMPT[: MIN_SHARED_TOKENS - 1], 7, 7)
    (same,), copies = held.plan_copies([chunk(1, short)])
    assert copies == () and same.token_ids == short
    # Slot 0 is written in the same step: it lends nothing.
    _, copies = held.plan_copies([chunk(0, PROMPT[:5]), chunk(1, PROMPT)])
    assert copies == ()


def test_decoding_and_forgetting_keep_what_a_slot_holds_exact() -> None:
    held = HeldTokens(2)
    held.prefilled(chunk(0, PROMPT[:20], last=False))
    held.prefilled(chunk(0, PROMPT[20:], start=20))
    held.decoded(0, 5, len(PROMPT))
    held.decoded(0, 6, len(PROMPT) + 1)
    held.decoded(0, 9, len(PROMPT) + 1)  # a retried position writes over
    assert held.held(0) == (*PROMPT, 5, 9)
    held.forget([0])
    assert held.held(0) == ()
    _, copies = held.plan_copies([chunk(1, PROMPT)])
    assert copies == ()


def test_repeats_within_a_step_follow_their_leader() -> None:
    held = HeldTokens(4)
    other = tuple(range(500, 540))
    leaders, followers = held.split_followers(
        [chunk(0, PROMPT), chunk(1, other), chunk(2, PROMPT), chunk(3, PROMPT)]
    )
    assert [c.slot for c in leaders] == [0, 1] and [c.slot for c in followers] == [2, 3]
    for leader in leaders:
        held.prefilled(leader)
    shortened, copies = held.plan_copies(followers)
    assert [c.source for c in copies] == [0, 0]
    assert all(len(c.token_ids) == 1 for c in shortened)


def test_a_repeat_that_a_settled_slot_serves_better_is_not_delayed() -> None:
    held = HeldTokens(3)
    held.prefilled(chunk(0, PROMPT))
    leaders, followers = held.split_followers([chunk(1, PROMPT), chunk(2, PROMPT)])
    assert followers == () and len(leaders) == 2


def forwarded_tokens(harness: Harness) -> list[int]:
    """Record how many prompt positions each forward computes."""
    seen: list[int] = []
    harness.backend.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(int(kwargs["input_ids"].numel())), with_kwargs=True
    )
    return seen


def test_n_identical_prompts_prefill_once_and_decode_as_computed(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    ids = encode(tokenizer, " ".join(PROMPTS * 3))
    assert len(ids) > 2 * MIN_SHARED_TOKENS
    harness = Harness(model, tokenizer)
    requests = [harness.submit(ids) for _ in range(3)]
    harness.run()
    expected = reference(model, tokenizer, ids, 12)
    for request in requests:
        assert harness.tokens[request] == expected
    assert harness.backend.shared_prefill_tokens == 2 * (len(ids) - 1)


def test_a_later_request_copies_from_a_slot_still_decoding(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    system = encode(tokenizer, " ".join(PROMPTS * 2))
    first = system + encode(tokenizer, " hello")
    second = system + encode(tokenizer, " chat model reply")
    harness = Harness(model, tokenizer, max_new_tokens=30)
    params = GenerationParams(max_new_tokens=30, temperature=0.0)
    a = harness.submit(first, params)
    for _ in range(3):
        harness.step()
    b = harness.submit(second, params)
    harness.run()
    assert harness.backend.shared_prefill_tokens >= len(system) - 1
    assert harness.tokens[a] == reference(model, tokenizer, first, 30)
    assert harness.tokens[b] == reference(model, tokenizer, second, 30)
