"""Per-step cost of chatstream's decode step against a bare batched forward + sampling.

    python benchmarks/step_overhead.py [--model tiny|smollm2] [--batch 8 32] [--steps 40]
    python benchmarks/step_overhead.py --model smollm2 --batch 8 --prompt-len 100 --long 1500

The bare loop is what a hand-written batched server does at best: one forward of the whole
batch with a DynamicCache, then argmax. chatstream's step is the transformers backend running
a decode StepPlan (static per-slot KV cache, 4D mask, batched sampler, one host sync). Both
decode the same number of tokens from prompts of the same length; the ratio is the host
overhead chatstream adds per step. With ``--long N`` row 0's prompt has N tokens and the step
is timed with one attention group and with attention split by length (no bare loop).
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

from chatstream.adapters.model.transformers_backend import TransformersBackend
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
    model: Any,
    tokenizer: Any,
    batch: int,
    prompt_len: int,
    steps: int,
    *,
    long_prompt: int = 0,
    split: bool = True,
) -> list[float]:
    """Decode steps of the backend; with ``long_prompt``, row 0's prompt has that length."""
    lengths = [long_prompt or prompt_len] + [prompt_len] * (batch - 1)
    backend = TransformersBackend(
        model, tokenizer, num_slots=batch, max_positions=2048, split_attention=split
    )
    params = GenerationParams(temperature=0.0, max_new_tokens=steps + 1)
    prefill = tuple(
        PrefillChunk(
            request_id=slot,
            slot=slot,
            token_ids=tuple(torch.randint(10, 300, (lengths[slot],)).tolist()),
            start=0,
            last=True,
            params=params,
        )
        for slot in range(batch)
    )
    # The long prompt alone: prefilled with the short ones it would pad them all to its length.
    last = {}
    for step, chunks in enumerate((prefill[1:], prefill[:1]) if long_prompt else (prefill,)):
        result = backend.run_step(StepPlan(step=step, prefill=chunks))
        last.update({rid: tokens[-1] for rid, tokens in result.tokens.items()})
    times = []
    for step in range(steps):
        plan = StepPlan(
            step=step + 2,
            decode=tuple(
                DecodeItem(
                    request_id=slot,
                    slot=slot,
                    token_id=last[slot],
                    position=lengths[slot] + step,
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
    parser.add_argument(
        "--long",
        type=int,
        default=0,
        help="row 0's prompt length: time the step with and without attention split by length",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    print(
        f"model {args.model}, {args.threads} thread(s), prompt {args.prompt_len}, "
        f"{args.steps} decode steps (median ms/step)"
    )
    for batch in args.batch:
        if args.long:
            # One long conversation among short ones: attention split by length or not.
            times = {
                split: statistics.median(
                    chatstream_steps(
                        model, tokenizer, batch, args.prompt_len, args.steps,
                        long_prompt=args.long, split=split,
                    )[5:]
                )
                for split in (False, True)
            }  # fmt: skip
            print(
                f"batch {batch:3d}, row 0 at {args.long} tokens: one attention group "
                f"{times[False] * 1e3:7.2f} ms  split by length {times[True] * 1e3:7.2f} ms  "
                f"ratio {times[True] / times[False]:4.2f}"
            )
            continue
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
