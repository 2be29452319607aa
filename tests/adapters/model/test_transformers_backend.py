"""The transformers backend under the engine, driven synchronously: continuous batching must
give exactly the tokens each request gets from ``model.generate`` when run alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from chatstream.adapters.model.transformers_backend import TransformersBackend
from chatstream.core import (
    NEED_INPUT,
    ChatStreamConfig,
    DecodingOptions,
    Engine,
    Finished,
    FinishReason,
    GenerationParams,
    StepCompleted,
    StepPlan,
    Submit,
    TextDelta,
    TokenLogprob,
    run_isolated,
)

GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0)
PROMPTS = [
    "hello",
    "the quick brown fox jumps over the lazy dog 世界",
    "テスト stream こんにちは",
    "chat model reply",
    "async trio token stream hello world the quick brown",
]


def encode(tokenizer: Any, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def reference(model: Any, tokenizer: Any, ids: tuple[int, ...], max_new: int) -> list[int]:
    """What ``generate`` samples greedily for one prompt alone, up to and excluding EOS."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(ids) :].tolist()
    if tokenizer.eos_token_id in out:
        out = out[: out.index(tokenizer.eos_token_id) + 1]
    return [int(t) for t in out]


class Harness:
    """Engine + backend in one thread: the backend's tokens per request are recorded."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        backend_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.config = ChatStreamConfig(
            **{
                "num_of_concurrent_executions": 4,
                "max_new_tokens": 12,
                "context_len": 256,
                **options,
            }
        )
        self.backend = TransformersBackend(
            model,
            tokenizer,
            num_slots=self.config.num_of_concurrent_executions,
            max_positions=self.config.context_len,
            **(backend_options or {}),
        )
        self.engine = Engine(
            self.config, self.backend, kv_bytes_per_token=self.backend.kv_bytes_per_token
        )
        self.tokens: dict[int, list[int]] = {}
        self.text: dict[int, str] = {}
        self.logprobs: dict[int, list[TokenLogprob]] = {}
        self.finished: dict[int, Finished] = {}
        self.next_id = 0
        #: What runs a step plan (a test may wrap the backend's).
        self.run_step: Callable[[StepPlan], StepCompleted] = self.backend.run_step

    def submit(self, ids: tuple[int, ...], params: GenerationParams = GREEDY) -> int:
        request_id = self.next_id
        self.next_id += 1
        self.tokens[request_id] = []
        self.text[request_id] = ""
        self.engine.send(
            Submit(
                request_id=request_id,
                prompt_token_ids=ids,
                params=params,
                decoding=DecodingOptions(stop_token_ids=self.backend.stop_token_ids),
            )
        )
        return request_id

    def step(self) -> bool:
        """Run every pending event and at most one model step; False when idle."""
        while (event := self.engine.next_event()) is not NEED_INPUT:
            if isinstance(event, StepPlan):
                result = self.run_step(event)
                for request_id, token_ids in result.tokens.items():
                    if request_id not in self.finished:
                        self.tokens[request_id].extend(token_ids)
                self.engine.send(result)
                return True
            if isinstance(event, Finished):
                self.finished[event.request_id] = event
            elif isinstance(event, TextDelta):
                self.text[event.request_id] += event.text
                self.logprobs.setdefault(event.request_id, []).extend(event.logprobs)
        return False

    def run(self) -> None:
        while self.step():
            pass


def test_batched_greedy_equals_generate_alone_with_staggered_joins(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    harness = Harness(model, tokenizer, num_of_concurrent_executions=3, max_queue_size=5)
    prompts = [encode(tokenizer, p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) >= 4, "prompt lengths should differ"
    # Requests join at different steps: two at once, one after 3 steps, the rest queue.
    harness.submit(prompts[0])
    harness.submit(prompts[1])
    for _ in range(3):
        harness.step()
    for ids in prompts[2:]:
        harness.submit(ids)
    harness.run()
    for request_id, ids in enumerate(prompts):
        expected = reference(model, tokenizer, ids, 12)
        assert harness.tokens[request_id] == expected, request_id
        finished = harness.finished[request_id]
        stop = expected[-1] == tokenizer.eos_token_id
        assert finished.reason is (FinishReason.STOP if stop else FinishReason.LENGTH)
        visible = expected[:-1] if stop else expected
        # A reply that ends inside a character drops its bytes (no U+FFFD at the end).
        whole = tokenizer.decode(visible, skip_special_tokens=True).rstrip("\ufffd")
        assert harness.text[request_id] == whole
    assert harness.engine.statistics().running == 0


def test_chunked_prefill_gives_the_same_tokens(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    harness = Harness(model, tokenizer, num_of_concurrent_executions=2, max_tokens_per_step=5)
    long_prompt = encode(tokenizer, " ".join(PROMPTS))
    short_prompt = encode(tokenizer, PROMPTS[0])
    harness.submit(short_prompt)
    harness.step()
    harness.submit(long_prompt)  # prefilled 4 tokens a step while the other decodes
    harness.run()
    assert harness.tokens[0] == reference(model, tokenizer, short_prompt, 12)
    assert harness.tokens[1] == reference(model, tokenizer, long_prompt, 12)


def test_seeded_sampling_is_reproducible_and_params_are_per_request(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    ids = encode(tokenizer, PROMPTS[1])
    seeded = GenerationParams(max_new_tokens=10, temperature=1.5, top_k=None, seed=1234)
    runs = []
    for companions in (0, 2):
        harness = Harness(model, tokenizer)
        request_id = harness.submit(ids, seeded)
        for _ in range(companions):  # different batch company must not change the draw
            harness.submit(ids, GenerationParams(max_new_tokens=10, temperature=1.0))
        harness.run()
        runs.append(harness.tokens[request_id])
    assert runs[0] == runs[1]
    harness = Harness(model, tokenizer)
    other = harness.submit(ids, GenerationParams(max_new_tokens=10, temperature=1.5, seed=99))
    harness.run()
    assert harness.tokens[other] != runs[0]


def test_max_positions_respected(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    backend = TransformersBackend(model, tokenizer, num_slots=1, max_positions=4096)
    assert backend.max_context == 512  # the model's max_position_embeddings
    assert backend.stop_token_ids == {tokenizer.eos_token_id}
    assert backend.encode("hello", add_special_tokens=False) == list(encode(tokenizer, "hello"))


def test_prefill_exception_fails_only_that_request(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    poison = tokenizer.convert_tokens_to_ids("<|eos|>")

    def refuse_poison(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if (kwargs["input_ids"] == poison).any():
            raise RuntimeError("cannot process this prompt")

    handle = model.register_forward_pre_hook(refuse_poison, with_kwargs=True)
    try:
        harness = Harness(model, tokenizer)
        good = harness.submit(encode(tokenizer, PROMPTS[0]))
        bad = harness.submit((*encode(tokenizer, PROMPTS[2]), poison))
        harness.run()
    finally:
        handle.remove()
    assert harness.finished[bad].reason is FinishReason.ERROR
    assert harness.finished[bad].error == "the model failed on this request (RuntimeError)"
    assert harness.tokens[good] == reference(model, tokenizer, encode(tokenizer, PROMPTS[0]), 12)


def test_nan_logits_fail_only_that_request(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    harness = Harness(model, tokenizer, num_of_concurrent_executions=2)
    poisoned_slot = {"row": -1}

    def nan_row(module: Any, args: Any, output: Any) -> Any:
        if poisoned_slot["row"] >= 0 and output.shape[0] > 1:
            output = output.clone()
            output[poisoned_slot["row"]] = float("nan")
        return output

    handle = model.lm_head.register_forward_hook(nan_row)
    try:
        first = harness.submit(encode(tokenizer, PROMPTS[0]))
        second = harness.submit(encode(tokenizer, PROMPTS[3]))
        harness.step()  # both prefilled
        poisoned_slot["row"] = 1  # the second request's row in the decode batch
        harness.step()
        poisoned_slot["row"] = -1
        harness.run()
    finally:
        handle.remove()
    assert harness.finished[second].reason is FinishReason.ERROR
    assert harness.finished[second].error == "the model produced NaN logits"
    assert harness.tokens[first] == reference(model, tokenizer, encode(tokenizer, PROMPTS[0]), 12)


def repeats(tokens: list[int], prompt: tuple[int, ...]) -> int:
    """Tokens that were already in the sequence when they were produced."""
    seen = set(prompt)
    count = 0
    for token in tokens:
        count += token in seen
        seen.add(token)
    return count


@pytest.mark.parametrize("method", ["multiplicative", "subtractive"])
def test_repetition_penalty_steers_greedy_away_from_seen_tokens(
    tiny_model: tuple[Any, Any], method: str
) -> None:
    model, tokenizer = tiny_model
    ids = encode(tokenizer, PROMPTS[4])
    harness = Harness(model, tokenizer, max_new_tokens=40)
    plain = harness.submit(ids, GenerationParams(max_new_tokens=40, temperature=0.0))
    penalised = harness.submit(
        ids,
        GenerationParams(
            max_new_tokens=40,
            temperature=0.0,
            repetition_penalty=50.0,
            repetition_penalty_method=method,  # type: ignore[arg-type]
        ),
    )
    harness.run()
    assert repeats(harness.tokens[plain], ids) > 0, "the plain greedy run should repeat"
    assert harness.tokens[penalised] != harness.tokens[plain]
    assert repeats(harness.tokens[penalised], ids) < repeats(harness.tokens[plain], ids)
    if method == "subtractive":
        # Subtracting 50 from a logit of this model forbids the token outright.
        assert repeats(harness.tokens[penalised], ids) == 0


class LegacyForward(torch.nn.Module):
    """The forward signature of transformers before 5.24 (``past_key_values``,
    ``cache_position``), over the installed model."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.generation_config = inner.generation_config
        self.seen_keywords: set[str] = set()

    def get_input_embeddings(self) -> Any:
        return self.inner.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        cache_position: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> Any:
        assert past_key_values is not None
        self.seen_keywords.add("past_key_values")
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=past_key_values,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
        )


def test_the_pre_5_24_cache_keyword_is_used_when_the_model_asks_for_it(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    legacy = LegacyForward(model)
    harness = Harness(legacy, tokenizer)
    prompts = [encode(tokenizer, p) for p in PROMPTS[:3]]
    for ids in prompts:
        harness.submit(ids)
    harness.run()
    assert legacy.seen_keywords == {"past_key_values"}
    for request_id, ids in enumerate(prompts):
        assert harness.tokens[request_id] == reference(model, tokenizer, ids, 12)


def test_device_may_be_a_string_or_a_torch_device(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    for device in ("cpu", torch.device("cpu"), None):
        backend = TransformersBackend(
            model, tokenizer, num_slots=1, max_positions=64, device=device
        )
        assert backend.device == torch.device("cpu")


def test_prompts_joining_together_are_prefilled_in_one_batch(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    harness = Harness(model, tokenizer, num_of_concurrent_executions=4, max_queue_size=2)
    prompts = [encode(tokenizer, p) for p in PROMPTS]
    long_run = GenerationParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    short_run = GenerationParams(max_new_tokens=2, temperature=0.0, ignore_eos=True)
    for ids, params in zip(prompts[:4], (long_run, short_run, long_run, short_run), strict=True):
        harness.submit(ids, params)
    # Two more wait; they take slots 1 and 3 when those finish in the same step, and are
    # prefilled together (different lengths, slots not next to each other) while 0 and 2
    # go on decoding.
    joined = [harness.submit(prompts[4], long_run), harness.submit(prompts[1], long_run)]
    forwards: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: forwards.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    try:
        harness.run()
    finally:
        hook.remove()
    widths = {len(prompts[4]), len(prompts[1])}
    assert (2, max(widths)) in forwards, forwards  # one forward for both prompts
    for request_id, ids in zip(joined, (prompts[4], prompts[1]), strict=True):
        expected = reference_ignoring_eos(model, tokenizer, ids, 12)
        assert harness.tokens[request_id] == expected


def reference_ignoring_eos(model: Any, tokenizer: Any, ids: tuple[int, ...], n: int) -> list[int]:
    """The n tokens ``generate`` samples greedily for one prompt alone, EOS or not."""
    out = generate_fixed_length(model, tokenizer, ids, n)
    return [int(t) for t in out.sequences[0, len(ids) :].tolist()]


def generate_fixed_length(model: Any, tokenizer: Any, ids: tuple[int, ...], n: int) -> Any:
    with torch.inference_mode():
        return model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )


LONG_RUN = GenerationParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
SHORT_RUN = GenerationParams(max_new_tokens=2, temperature=0.0, ignore_eos=True)


def test_a_prompt_prefilled_in_chunks_between_decoding_slots(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    harness = Harness(
        model, tokenizer, num_of_concurrent_executions=3, max_queue_size=1, max_tokens_per_step=6
    )
    prompts = [encode(tokenizer, p) for p in PROMPTS[:3]]
    long_prompt = encode(tokenizer, " ".join(PROMPTS))
    first = harness.submit(prompts[0], LONG_RUN)  # slot 0
    harness.submit(prompts[1], SHORT_RUN)  # slot 1, leaves after two tokens
    third = harness.submit(prompts[2], LONG_RUN)  # slot 2
    # Waits, then takes slot 1 and is prefilled a few tokens a step while slots 0 and 2
    # decode on both sides of it.
    middle = harness.submit(long_prompt, LONG_RUN)
    chunks: list[int] = []
    logits = run_watching_forwards(
        harness, lambda kwargs: chunks.append(kwargs["input_ids"].shape[1])
    )
    assert chunks.count(4) >= 3, chunks  # 6 tokens a step, 2 of them for the decoding rows
    for request_id, ids in ((first, prompts[0]), (third, prompts[2]), (middle, long_prompt)):
        assert harness.tokens[request_id] == reference_ignoring_eos(model, tokenizer, ids, 12)
        # Not only the same argmax: the same distribution at every token.
        expected = reference_logits(model, tokenizer, ids, 12)
        assert_logits_close(torch.stack(logits[request_id]), expected)


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The same distribution, to what the CPU's kernels can promise.

    Batched, chunked and unbatched forwards add the same products in different orders, and
    AVX2 and AVX-512 GEMM kernels split their sums differently again: float32 logits of the
    tiny model differ by up to ~2.2e-5 (seen on Intel Xeon with AVX-512, over 230 positions)
    where torch's default tolerance allows 1e-5. The bound is 1024 units of the dtype's
    rounding (1.2e-4 for float32), relative to the logits' own scale; the greedy tokens are
    compared exactly besides.
    """
    tolerance = 1024 * torch.finfo(expected.dtype).eps
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, atol=tolerance * scale, rtol=tolerance)


def test_a_step_narrowed_after_a_late_failure_gives_the_others_the_same_tokens(
    tiny_model: tuple[Any, Any],
) -> None:
    # A step that fails after the backend did all its work (KV written, masks opened, tokens
    # sampled) is run again, then in parts: writing the same positions twice must change
    # nothing for the rows that did not fail.
    model, tokenizer = tiny_model
    harness = Harness(model, tokenizer)
    prompts = [encode(tokenizer, p) for p in PROMPTS[:4]]
    ids = [harness.submit(p, LONG_RUN) for p in prompts]
    poisoned = ids[2]
    runs: list[StepPlan] = []

    def fails_late(plan: StepPlan) -> StepCompleted:
        runs.append(plan)
        result = harness.backend.run_step(plan)
        decoding = {d.request_id for d in plan.decode}
        if poisoned in decoding and len(harness.tokens[ids[0]]) >= 4:
            raise RuntimeError("fails after the work is done")
        return result

    harness.run_step = lambda plan: run_isolated(plan, fails_late).result
    harness.run()
    assert harness.finished[poisoned].reason is FinishReason.ERROR
    assert len(runs) > harness.config.max_new_tokens  # some steps ran several times
    for request_id, prompt in zip(ids, prompts, strict=True):
        if request_id != poisoned:
            assert harness.tokens[request_id] == reference_ignoring_eos(
                model, tokenizer, prompt, 12
            )


def run_watching_forwards(
    harness: Harness, watch: Callable[[dict[str, Any]], object]
) -> dict[int, list[torch.Tensor]]:
    """Run the harness to the end, calling ``watch`` with each forward's keyword arguments;
    returns every request's next-token logits (see :func:`record_logits`)."""
    model = harness.backend.model
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: watch(kwargs), with_kwargs=True
    )
    logits = record_logits(harness)
    try:
        harness.run()
    finally:
        hook.remove()
    return logits


def record_logits(harness: Harness) -> dict[int, list[torch.Tensor]]:
    """Every request's next-token logits, as the backend hands them to its sampler."""
    seen: dict[int, list[torch.Tensor]] = {}
    sample = harness.backend._sample

    def recording(step: int, rows: Any, batch: torch.Tensor, *args: Any) -> Any:
        for (request_id, _, _), row in zip(rows, batch, strict=True):
            seen.setdefault(request_id, []).append(row.float().clone())
        return sample(step, rows, batch, *args)

    harness.backend._sample = recording  # type: ignore[method-assign,assignment]
    return seen


def reference_logits(model: Any, tokenizer: Any, ids: tuple[int, ...], n: int) -> torch.Tensor:
    """The next-token logits of those n greedy steps, ``[n, vocab]``."""
    return torch.cat(generate_fixed_length(model, tokenizer, ids, n).logits).float()


def test_a_slot_whose_prompt_failed_serves_the_next_request_cleanly(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    poison = tokenizer.convert_tokens_to_ids("<|eos|>")

    def refuse_poison(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if (kwargs["input_ids"] == poison).any():
            raise RuntimeError("cannot process this prompt")

    harness = Harness(model, tokenizer, num_of_concurrent_executions=3, max_queue_size=2)
    prompts = [encode(tokenizer, p) for p in PROMPTS]
    harness.submit(prompts[0], LONG_RUN)  # slot 0
    harness.submit(prompts[1], SHORT_RUN)  # slot 1
    harness.submit(prompts[2], LONG_RUN)  # slot 2
    # Slot 1 goes to a prompt whose prefill fails while slots 0 and 2 decode, then to a
    # request that must not see anything the failed one left behind.
    bad = harness.submit((*prompts[3], poison), LONG_RUN)
    after = harness.submit(prompts[4], LONG_RUN)
    handle = model.register_forward_pre_hook(refuse_poison, with_kwargs=True)
    try:
        harness.run()
    finally:
        handle.remove()
    assert harness.finished[bad].reason is FinishReason.ERROR
    assert harness.finished[after].reason is FinishReason.LENGTH
    assert harness.tokens[after] == reference_ignoring_eos(model, tokenizer, prompts[4], 12)


def test_decode_equals_the_tokenizers_decode(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    backend = TransformersBackend(model, tokenizer, num_slots=1, max_positions=64)
    assert backend._rust_decode is not None, "a fast tokenizer is decoded directly"
    generator = torch.Generator().manual_seed(7)
    samples = [list(encode(tokenizer, p)) for p in PROMPTS]
    samples += [
        torch.randint(0, len(tokenizer), (n,), generator=generator).tolist() for n in range(1, 40)
    ]
    for ids in samples:
        assert backend.decode(ids) == tokenizer.decode(ids, skip_special_tokens=True), ids
    # With a space clean-up set, decoding goes through the tokenizer, which applies it.
    tokenizer.clean_up_tokenization_spaces = True
    try:
        cleaning = TransformersBackend(model, tokenizer, num_slots=1, max_positions=64)
        assert cleaning._rust_decode is None
        assert cleaning.decode(samples[1]) == tokenizer.decode(samples[1], skip_special_tokens=True)
    finally:
        tokenizer.clean_up_tokenization_spaces = False


@pytest.mark.parametrize(
    "layout",
    [
        # Long conversations in slots 1 and 5: both groups are scattered rows (indices).
        ("S", "L", "s", "S", "S", "L", "S", "S"),
        # One long conversation in slot 0: both groups are ranges of rows (views).
        ("L", "S", "S", "S", "S", "S", "S", "S"),
    ],
)
def test_rows_of_very_different_lengths_attend_in_two_groups(
    tiny_model: tuple[Any, Any], layout: tuple[str, ...]
) -> None:
    model, tokenizer = tiny_model
    harness = Harness(model, tokenizer, num_of_concurrent_executions=8, max_tokens_per_step=600)
    short = [encode(tokenizer, p) for p in PROMPTS]
    long_prompt = encode(tokenizer, " ".join(PROMPTS * 9))[:230]
    # "L": a long conversation; "S": a short one; "s": a short one whose reply stops after
    # two tokens, which leaves a free slot among the decoding rows.
    prompts = [
        long_prompt[slot:] if kind == "L" else short[slot % len(short)]
        for slot, kind in enumerate(layout)
    ]
    runs = [SHORT_RUN if kind == "s" else LONG_RUN for kind in layout]
    ids = [harness.submit(p, r) for p, r in zip(prompts, runs, strict=True)]
    implementations: list[str] = []
    logits = run_watching_forwards(
        harness, lambda kwargs: implementations.append(model.config._attn_implementation)
    )
    assert implementations.count("chatstream_split") >= 10, implementations
    assert model.config._attn_implementation == "sdpa", "switched back after each step"
    for request_id, prompt, run in zip(ids, prompts, runs, strict=True):
        n = run.max_new_tokens
        assert harness.tokens[request_id] == reference_ignoring_eos(model, tokenizer, prompt, n)
        expected = reference_logits(model, tokenizer, prompt, n)
        assert_logits_close(torch.stack(logits[request_id]), expected)
