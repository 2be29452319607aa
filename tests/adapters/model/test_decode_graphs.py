"""The decode step from graphs (:mod:`chatstream.adapters.model.decode_graphs`), on the CPU.

The CUDA calls sit behind a ``Capturer``; here :class:`RerunCapturer` stands in for them: a
"replay" runs the recorded function again on the same static buffers. A step whose inputs
did not go through those buffers, or a graph that read a tensor made for an earlier step,
would replay the wrong step, and its tokens would differ from ``generate``'s.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

from chatstream.adapters.model.decode_graphs import (
    CudaCapturer,
    Graph,
    RerunCapturer,
    capturer_for,
    column_buckets,
    pad_to,
    padded_sizes,
)
from chatstream.adapters.model.slot_cache import SCRATCH_COLUMN
from chatstream.adapters.model.transformers_backend import TransformersBackend
from chatstream.core import StepCompleted, StepPlan
from tests.adapters.model.test_transformers_backend import (
    LONG_RUN,
    PROMPTS,
    SHORT_RUN,
    Harness,
    assert_logits_close,
    encode,
    record_logits,
    reference_ignoring_eos,
    reference_logits,
)
from tests.tiny_model import load_tiny_model

# --------------------------------------------------------------------------- sizes


def test_padded_sizes_grow_by_eight_past_eight_and_end_at_the_slot_count() -> None:
    assert padded_sizes(0) == ()
    assert padded_sizes(1) == (1,)
    assert padded_sizes(3) == (1, 2, 3)
    assert padded_sizes(8) == (1, 2, 4, 8)
    assert padded_sizes(20) == (1, 2, 4, 8, 16, 20)
    assert padded_sizes(128) == (1, 2, 4, 8, *range(16, 129, 8))


@pytest.mark.parametrize("num_slots", [1, 2, 5, 8, 9, 32, 37, 128])
def test_every_batch_pads_to_the_smallest_size_that_holds_it(num_slots: int) -> None:
    sizes = padded_sizes(num_slots)
    for n in range(1, num_slots + 1):
        size = pad_to(n, sizes)
        assert size is not None and n <= size <= num_slots
        assert not any(n <= s < size for s in sizes)
    assert pad_to(num_slots + 1, sizes) is None


def test_column_buckets_double_from_256_and_end_at_the_cache_width() -> None:
    assert column_buckets(100) == (100,)
    assert column_buckets(257) == (256, 257)
    assert column_buckets(1025) == (256, 512, 1024, 1025)
    assert column_buckets(1024) == (256, 512, 1024)
    assert pad_to(257, column_buckets(1025)) == 512


# --------------------------------------------------------------------------- device check


def test_graphs_are_made_only_for_a_cuda_device_unless_turned_off(
    tiny_model: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    cuda = torch.device("cuda")
    assert isinstance(capturer_for("auto", cuda), CudaCapturer)  # touches no GPU
    assert isinstance(capturer_for(True, cuda), CudaCapturer)
    assert capturer_for(False, cuda) is None
    assert capturer_for("auto", torch.device("cpu")) is None
    assert not caplog.records
    with caplog.at_level(logging.INFO, logger="chatstream"):
        assert capturer_for(True, torch.device("cpu")) is None
    assert "CUDA graphs need a CUDA device" in caplog.text

    model, tokenizer = tiny_model
    for option in ("auto", True, False):
        backend = TransformersBackend(
            model, tokenizer, num_slots=2, max_positions=64, cuda_graphs=option
        )
        assert backend._graphs is None, option


# --------------------------------------------------------------------------- graph mode


def graph_harness(model: Any, tokenizer: Any, capturer: Any, **options: Any) -> Harness:
    return Harness(model, tokenizer, backend_options={"graph_capturer": capturer}, **options)


def test_replayed_steps_give_generates_tokens_and_logits(tiny_model: tuple[Any, Any]) -> None:
    # Four slots, requests joining at different steps and one leaving early: batches of
    # 1 to 4 rows with free slots among and after them (padded rows), and a prompt
    # prefilled in chunks while the others decode (mixed steps: eager prefill, replayed
    # decode).
    model, tokenizer = tiny_model
    capturer = RerunCapturer()
    harness = graph_harness(
        model, tokenizer, capturer, num_of_concurrent_executions=4, max_tokens_per_step=8
    )
    prompts = [encode(tokenizer, p) for p in PROMPTS]
    runs = [LONG_RUN, SHORT_RUN, LONG_RUN, LONG_RUN, LONG_RUN]
    logits = record_logits(harness)
    mixed = []

    def run_step(plan: StepPlan) -> StepCompleted:
        mixed.append(bool(plan.prefill and plan.decode))
        return harness.backend.run_step(plan)

    harness.run_step = run_step
    ids = [harness.submit(prompts[0], runs[0])]
    for _ in range(3):
        harness.step()
    ids += [harness.submit(p, r) for p, r in zip(prompts[1:], runs[1:], strict=True)]
    harness.run()
    assert sum(mixed) >= 3, mixed
    backend = harness.backend
    assert backend.eager_decode_steps == 0
    assert backend.graph_decode_steps >= 12
    assert backend._graphs is not None
    captured = backend._graphs.captured
    assert {size for size, _ in captured} >= {1, 4}, captured
    assert {columns for _, columns in captured} == {256}  # the 257-column cache's first
    assert capturer.captured == len(captured)  # each once
    for request_id, prompt, run in zip(ids, prompts, runs, strict=True):
        n = run.max_new_tokens
        assert harness.tokens[request_id] == reference_ignoring_eos(model, tokenizer, prompt, n)
        expected = reference_logits(model, tokenizer, prompt, n)
        assert_logits_close(torch.stack(logits[request_id]), expected)


def test_replayed_and_eager_steps_agree(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    prompts = [encode(tokenizer, p) for p in PROMPTS]
    results = []
    for capturer in (None, RerunCapturer()):
        harness = graph_harness(
            model, tokenizer, capturer, num_of_concurrent_executions=3, max_queue_size=5
        )
        logits = record_logits(harness)
        ids = [harness.submit(p, SHORT_RUN if i == 1 else LONG_RUN) for i, p in enumerate(prompts)]
        harness.run()
        assert (harness.backend.graph_decode_steps > 0) is (capturer is not None)
        results.append(([harness.tokens[i] for i in ids], [torch.stack(logits[i]) for i in ids]))
    (eager_tokens, eager_logits), (graph_tokens, graph_logits) = results
    assert graph_tokens == eager_tokens
    for actual, expected in zip(graph_logits, eager_logits, strict=True):
        assert_logits_close(actual, expected)


def test_a_long_row_moves_the_step_to_a_wider_graph(tiny_model: tuple[Any, Any]) -> None:
    # The 513-column cache has graphs reading 256, 512 and 513 columns: a row past position
    # 254 needs the 512 graph; the short rows beside it read its width too (no split).
    model, tokenizer = tiny_model
    harness = graph_harness(
        model,
        tokenizer,
        RerunCapturer(),
        num_of_concurrent_executions=2,
        context_len=512,
        max_tokens_per_step=512,
    )
    long_prompt = encode(tokenizer, " ".join(PROMPTS * 12))[:250]
    short_prompt = encode(tokenizer, PROMPTS[0])
    long_id = harness.submit(long_prompt, LONG_RUN)
    short_id = harness.submit(short_prompt, LONG_RUN)
    harness.run()
    graphs = harness.backend._graphs
    assert graphs is not None
    assert graphs.captured == ((2, 256), (2, 512)), graphs.captured
    assert harness.tokens[long_id] == reference_ignoring_eos(model, tokenizer, long_prompt, 12)
    assert harness.tokens[short_id] == reference_ignoring_eos(model, tokenizer, short_prompt, 12)


def test_padding_rows_leave_free_slots_untouched(tiny_model: tuple[Any, Any]) -> None:
    # Slots 0..2 decode; slot 3 is free and decodes as the padding row of the 4-row graph.
    model, tokenizer = tiny_model
    harness = graph_harness(model, tokenizer, RerunCapturer(), num_of_concurrent_executions=5)
    for prompt in PROMPTS[:3]:
        harness.submit(encode(tokenizer, prompt), LONG_RUN)
    harness.run()
    backend = harness.backend
    assert backend._graphs is not None
    assert {size for size, _ in backend._graphs.captured} == {4}
    mask = backend._mask
    for free in (3, 4):
        for buffer in (*backend._cache._keys, *backend._cache._values):
            assert buffer is not None
            assert not buffer[free, :, SCRATCH_COLUMN + 1 :].any(), "a free slot was written"
        assert mask[free, SCRATCH_COLUMN] == 0
        assert (mask[free, SCRATCH_COLUMN + 1 :] == torch.finfo(mask.dtype).min).all()


# --------------------------------------------------------------------------- fall-back


class FailingCapturer:
    """Refuses every capture, as CUDA does for a model with a host sync in its forward."""

    def __init__(self) -> None:
        self.attempts = 0

    def capture(self, function: Callable[[], None]) -> Graph:
        self.attempts += 1
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_is_logged_once_and_every_step_runs_eagerly(
    tiny_model: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = tiny_model
    capturer = FailingCapturer()
    harness = graph_harness(model, tokenizer, capturer, num_of_concurrent_executions=3)
    prompts = [encode(tokenizer, p) for p in PROMPTS]
    with caplog.at_level(logging.WARNING, logger="chatstream"):
        ids = [harness.submit(p, LONG_RUN) for p in prompts]
        harness.run()
    assert capturer.attempts == 1, "no second attempt"
    failures = [r for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(failures) == 1 and failures[0].name == "chatstream"
    assert failures[0].exc_info is not None
    backend = harness.backend
    assert backend.graph_decode_steps == 0 and backend.eager_decode_steps >= 12
    assert backend._graphs is not None and not backend._graphs.enabled
    for request_id, prompt in zip(ids, prompts, strict=True):
        assert harness.tokens[request_id] == reference_ignoring_eos(model, tokenizer, prompt, 12)


def test_close_drops_the_graphs(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    harness = graph_harness(model, tokenizer, RerunCapturer())
    harness.submit(encode(tokenizer, PROMPTS[0]), SHORT_RUN)
    harness.run()
    graphs = harness.backend._graphs
    assert graphs is not None and graphs.captured
    harness.backend.close()
    assert not graphs.captured and not graphs.enabled


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_graphs_give_the_eager_tokens(tiny_model_dir: pathlib.Path) -> None:
    model: Any
    model, tokenizer = load_tiny_model(tiny_model_dir)
    model.to("cuda")
    prompts = [encode(tokenizer, p) for p in PROMPTS]
    tokens = []
    for option in (False, True):
        harness = Harness(
            model,
            tokenizer,
            backend_options={"device": "cuda", "cuda_graphs": option},
            num_of_concurrent_executions=3,
        )
        ids = [harness.submit(p, LONG_RUN) for p in prompts]
        harness.run()
        assert (harness.backend.graph_decode_steps > 0) is option
        tokens.append([harness.tokens[i] for i in ids])
    assert tokens[0] == tokens[1]
