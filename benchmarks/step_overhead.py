"""Per-step cost of chatstream's decode step against a bare batched forward + sampling.

    python benchmarks/step_overhead.py [--model tiny|smollm2] [--batch 8 32] [--steps 40]

The bare loop is what a hand-written batched server does at best: one forward of the whole
batch with a DynamicCache, then argmax. chatstream's step is the transformers backend running
a decode StepPlan (static per-slot KV cache, 4D mask, batched sampler, one host sync). Both
decode the same number of tokens from prompts of the same length; the ratio is the host
overhead chatstream adds per step.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))

from chatstream.adapters.transformers_backend import TransformersBackend
from chatstream.core import DecodeItem, GenerationParams, PrefillChunk, StepPlan


def load(name: str) -> tuple[Any, Any]:
    if name == "smollm2":
        from chatstream.embedded import load_embedded_model

        return load_embedded_model()
    import tempfile

    from tests.tiny_model import build_tiny_model, load_tiny_model

    return load_tiny_model(build_tiny_model(Path(tempfile.mkdtemp())))


@torch.inference_mode()
def bare(model: Any, batch: int, prompt_len: int, steps: int) -> list[float]:
    from transformers import DynamicCache

    ids = torch.randint(10, 300, (batch, prompt_len))
    cache = DynamicCache(config=model.config)
    keyword = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    )
    out = model(input_ids=ids, use_cache=True, **{keyword: cache})
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        out = model(input_ids=token, use_cache=True, **{keyword: cache})
        token.tolist()
        times.append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def chatstream_steps(
    model: Any, tokenizer: Any, batch: int, prompt_len: int, steps: int
) -> list[float]:
    backend = TransformersBackend(model, tokenizer, num_slots=batch, max_positions=1024)
    params = GenerationParams(temperature=0.0, max_new_tokens=steps + 1)
    prefill = tuple(
        PrefillChunk(
            request_id=slot,
            slot=slot,
            token_ids=tuple(torch.randint(10, 300, (prompt_len,)).tolist()),
            start=0,
            last=True,
            params=params,
        )
        for slot in range(batch)
    )
    result = backend.run_step(StepPlan(step=0, prefill=prefill))
    last = {rid: tokens[-1] for rid, tokens in result.tokens.items()}
    times = []
    for step in range(steps):
        plan = StepPlan(
            step=step + 1,
            decode=tuple(
                DecodeItem(
                    request_id=slot,
                    slot=slot,
                    token_id=last[slot],
                    position=prompt_len + step,
                    params=params,
                )
                for slot in range(batch)
            ),
        )
        start = time.perf_counter()
        result = backend.run_step(plan)
        times.append(time.perf_counter() - start)
        last = {rid: tokens[-1] for rid, tokens in result.tokens.items()}
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    print(
        f"model {args.model}, {args.threads} thread(s), prompt {args.prompt_len}, "
        f"{args.steps} decode steps (median ms/step)"
    )
    for batch in args.batch:
        b = statistics.median(bare(model, batch, args.prompt_len, args.steps)[5:])
        c = statistics.median(
            chatstream_steps(model, tokenizer, batch, args.prompt_len, args.steps)[5:]
        )
        print(
            f"batch {batch:3d}: bare {b * 1e3:7.2f} ms  chatstream {c * 1e3:7.2f} ms  "
            f"ratio {c / b:4.2f}  ({batch / c:7.1f} tok/s)"
        )


if __name__ == "__main__":
    main()
