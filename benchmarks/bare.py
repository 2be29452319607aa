"""Bare loops: the same model and prompts driven directly, no server, greedy, fixed length.

``batch1``       C requests back to back, each a batch-1 prefill then a KV-cache greedy
                 loop (what a hand-written FastAPI endpoint does, one request at a time)
``interleaved``  C requests at once, each a batch-1 loop, advanced one token in turn
                 (what the original ChatStream does on its event loop, minus its sleeps)
``generate``     ``model.generate`` with the whole batch of C known in advance
                 (left-padded, ``min_new_tokens = max_new_tokens``)
``step``         a lean batched greedy loop: one batched forward per token for all C
                 (the ceiling for continuous batching without a scheduler)
``limit``        the physical limit: weights bytes / memory bandwidth per decode step, with
                 the bandwidth assumed (H100 SXM HBM3: 3.35 TB/s) and measured by a large
                 device copy

    python -m benchmarks.bare --model smollm2 --concurrency 1,2,8 --max-new-tokens 64

Prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from benchmarks.lagprobe import percentile
from benchmarks.loadgen import PROMPTS

__all__ = [
    "batch1_sequential",
    "batched_generate",
    "batched_step",
    "interleaved",
    "physical_limit",
]

#: HBM3 bandwidth of an H100 SXM (spec sheet), the stated assumption of the GPU limit.
H100_SXM_BYTES_PER_S = 3.35e12


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _cache_keyword(model: Any) -> str:
    # transformers 5.24 renamed the forward keyword; older 5.x take past_key_values.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def prompt_ids(tokenizer: Any, index: int, prompts: Sequence[str] = PROMPTS) -> list[int]:
    """The ids the servers feed the model for request ``index`` (chat template, open reply)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts[index % len(prompts)]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _record(
    scenario: str,
    concurrency: int,
    tokens: int,
    wall: float,
    ttfts: Sequence[float] = (),
    itls: Sequence[float] = (),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "concurrency": concurrency,
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "ttft_p50_ms": _ms(percentile(ttfts, 50)),
        "ttft_p99_ms": _ms(percentile(ttfts, 99)),
        "itl_p50_ms": _ms(percentile(itls, 50)),
        "itl_p99_ms": _ms(percentile(itls, 99)),
        **extra,
    }


class _Stream:
    """One request's batch-1 greedy loop over a KV cache."""

    def __init__(self, model: Any, ids: list[int], device: str) -> None:
        self.model = model
        self.ids = ids
        self.device = device
        self.cache = _new_cache(model)
        self.keyword = _cache_keyword(model)
        self.next_token: int | None = None
        self.produced = 0

    @torch.inference_mode()
    def advance(self) -> int:
        """Prefill (first call) or one decode step; returns the new token (host sync)."""
        if self.next_token is None:
            inputs = torch.tensor([self.ids], device=self.device)
        else:
            inputs = torch.tensor([[self.next_token]], device=self.device)
        out = self.model(
            input_ids=inputs, use_cache=True, logits_to_keep=1, **{self.keyword: self.cache}
        )
        self.next_token = int(out.logits[0, -1].argmax())
        self.produced += 1
        return self.next_token


def batch1_sequential(
    model: Any,
    tokenizer: Any,
    concurrency: int,
    max_new: int,
    device: str,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """C requests one after another, batch 1 each; starts no new request past
    ``deadline_s`` (and says so)."""
    ttfts: list[float] = []
    itls: list[float] = []
    tokens = 0
    truncated = False
    _sync(device)
    start = time.perf_counter()
    for index in range(concurrency):
        if deadline_s is not None and time.perf_counter() - start > deadline_s:
            truncated = True
            break
        submitted = time.perf_counter()
        stream = _Stream(model, prompt_ids(tokenizer, index), device)
        last = submitted
        for step in range(max_new):
            stream.advance()
            now = time.perf_counter()
            if step == 0:
                ttfts.append(now - submitted)  # from its own start, not from the first request's
            else:
                itls.append(now - last)
            last = now
        tokens += stream.produced
    _sync(device)
    wall = time.perf_counter() - start
    return _record(
        "bare_batch1_sequential", concurrency, tokens, wall, ttfts, itls, truncated=truncated
    )


def interleaved(
    model: Any,
    tokenizer: Any,
    concurrency: int,
    max_new: int,
    device: str,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """C requests advanced one token each in turn, batch 1 (the original's schedule);
    stops early (and says so) past ``deadline_s``."""
    streams = [_Stream(model, prompt_ids(tokenizer, i), device) for i in range(concurrency)]
    first: list[float | None] = [None] * concurrency
    last: list[float] = [0.0] * concurrency
    itls: list[float] = []
    _sync(device)
    start = time.perf_counter()
    truncated = False
    for _ in range(max_new):
        for i, stream in enumerate(streams):
            stream.advance()
            now = time.perf_counter()
            if first[i] is None:
                first[i] = now - start
            else:
                itls.append(now - last[i])
            last[i] = now
        if deadline_s is not None and time.perf_counter() - start > deadline_s:
            truncated = True
            break
    _sync(device)
    wall = time.perf_counter() - start
    tokens = sum(s.produced for s in streams)
    ttfts = [t for t in first if t is not None]
    return _record(
        "bare_interleaved_batch1", concurrency, tokens, wall, ttfts, itls, truncated=truncated
    )


def _left_padded(tokenizer: Any, concurrency: int, device: str) -> tuple[Any, Any]:
    rows = [prompt_ids(tokenizer, i) for i in range(concurrency)]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


@torch.inference_mode()
def batched_generate(
    model: Any, tokenizer: Any, concurrency: int, max_new: int, device: str
) -> dict[str, Any]:
    """``model.generate`` on the whole batch at once."""
    ids, mask = _left_padded(tokenizer, concurrency, device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    _sync(device)
    start = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=max_new,
        min_new_tokens=max_new,
        pad_token_id=pad,
    )
    _sync(device)
    wall = time.perf_counter() - start
    tokens = int((out.shape[1] - ids.shape[1]) * concurrency)
    # Every reply arrives at the end: TTFT is the whole run.
    return _record("bare_generate_batched", concurrency, tokens, wall, [wall] * concurrency)


@torch.inference_mode()
def batched_step(
    model: Any, tokenizer: Any, concurrency: int, max_new: int, device: str
) -> dict[str, Any]:
    """One batched forward per token for all C, greedy, one host sync per step."""
    ids, mask = _left_padded(tokenizer, concurrency, device)
    cache = _new_cache(model)
    keyword = _cache_keyword(model)
    itls: list[float] = []
    _sync(device)
    start = time.perf_counter()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    width = ids.shape[1]
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        cache_position=torch.arange(width, device=device),
        use_cache=True,
        logits_to_keep=1,
        **{keyword: cache},
    )
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    token.tolist()
    ttft = time.perf_counter() - start
    last = time.perf_counter()
    position = positions[:, -1:]
    for step in range(1, max_new):
        mask = torch.cat([mask, mask.new_ones(concurrency, 1)], dim=1)
        position = position + 1
        out = model(
            input_ids=token,
            attention_mask=mask,
            position_ids=position,
            cache_position=torch.tensor([width + step - 1], device=device),
            use_cache=True,
            logits_to_keep=1,
            **{keyword: cache},
        )
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        token.tolist()
        now = time.perf_counter()
        itls.append(now - last)
        last = now
    _sync(device)
    wall = time.perf_counter() - start
    return _record(
        "bare_step_batched", concurrency, concurrency * max_new, wall, [ttft] * concurrency, itls
    )


def measured_bandwidth(device: str, nbytes: int) -> float:
    """Bytes per second of a large device-to-device copy (counting bytes read and written)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def physical_limit(
    model: Any, concurrencies: Sequence[int], device: str, copy_bytes: int
) -> list[dict[str, Any]]:
    """Decode-step floor: every step reads every weight once. Tokens/s limit at batch C is
    C x steps/s (until compute, KV-cache reads or host overhead bind first)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    measured = measured_bandwidth(device, copy_bytes)
    out = []
    for name, bandwidth in (
        ("assumed_h100_sxm", H100_SXM_BYTES_PER_S),
        ("measured_copy", measured),
    ):
        steps = bandwidth / weights
        for c in concurrencies:
            out.append(
                {
                    "scenario": "physical_limit",
                    "bandwidth": name,
                    "bandwidth_bytes_per_s": round(bandwidth),
                    "weights_bytes": weights,
                    "concurrency": c,
                    "step_ms": round(1000 / steps, 4),
                    "tokens_per_s": round(c * steps, 1),
                }
            )
    return out


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "batch1": batch1_sequential,
    "interleaved": interleaved,
    "generate": batched_generate,
    "step": batched_step,
}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.models import load_bench_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 or a model folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--concurrency", default="1,2,8")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--scenarios", default="batch1,generate,step")
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds after which batch1 and interleaved runs stop early",
    )
    parser.add_argument("--copy-bytes", type=int, default=256 * 2**20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    scenarios = args.scenarios.split(",")
    model, tokenizer = load_bench_model(args.model, device=args.device, dtype=args.dtype)

    def emit(record: dict[str, Any]) -> None:
        record.update(model=args.model, device=args.device, threads=args.threads)
        record.setdefault("max_new_tokens", args.max_new_tokens)
        print(json.dumps(record), flush=True)

    # Warm-up: first calls allocate and pick kernels.
    batched_step(model, tokenizer, 2, 4, args.device)
    batch1_sequential(model, tokenizer, 1, 4, args.device)
    if "generate" in scenarios:
        batched_generate(model, tokenizer, 2, 2, args.device)
    for name in scenarios:
        if name == "limit":
            for record in physical_limit(model, concurrencies, args.device, args.copy_bytes):
                emit(record)
            continue
        for c in concurrencies:
            kwargs: dict[str, Any] = {}
            if name in ("batch1", "interleaved"):
                kwargs["deadline_s"] = args.deadline
            try:
                emit(
                    SCENARIOS[name](model, tokenizer, c, args.max_new_tokens, args.device, **kwargs)
                )
            except Exception as error:  # one failure must not lose the rest
                emit({"scenario": f"bare_{name}", "concurrency": c, "error": repr(error)[:300]})
            sys.stdout.flush()


if __name__ == "__main__":
    main()
