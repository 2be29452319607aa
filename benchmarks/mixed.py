"""One long conversation among short ones, through HTTP: chatstream with attention split by
length against chatstream with one attention group.

    python -m benchmarks.mixed [--model-dir DIR] [--concurrency 8] [--long-tokens 1500]

Request i gets prompt i mod C: prompt 0 is a user input of about ``--long-tokens`` tokens, the
others the benchmark's short questions, so at any time about one of the C streams is a long
one. Every reply is ``--max-new-tokens`` long. Both servers are the benchmark app
(``benchmarks/chatstream_app.py``) with ``context_len`` 2048; ``BENCH_SPLIT_ATTENTION=0``
turns the split off. Prints a markdown table (the decode step's time comes from the
model-thread probe).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any, TextIO

from benchmarks import loadgen
from benchmarks.processes import chatstream_command, free_port, log, server, server_env

PARAGRAPH = (
    "The river starts in the hills, runs past the old mill and the school, and reaches the "
    "sea after a long bend through the fields where the farmers grow wheat and beans. "
)


def long_input(model_dir: str, tokens: int) -> str:
    """A user input of about ``tokens`` tokens, ending with a question."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    per_paragraph = len(tokenizer(PARAGRAPH, add_special_tokens=False)["input_ids"])
    text = PARAGRAPH * max(1, tokens // per_paragraph)
    return text + "Summarize this text in one sentence."


def run(args: argparse.Namespace, model_dir: str) -> list[dict[str, Any]]:
    prompts = [long_input(model_dir, args.long_tokens), *loadgen.PROMPTS[: args.concurrency - 1]]
    params = {"max_new_tokens": args.max_new_tokens, "ignore_eos": True}
    rows = []
    with Path(args.log).open("a", encoding="utf-8") as logfile:
        for split in (True, False):
            rows.append(run_one(args, model_dir, prompts, params, split, logfile))
    return rows


def run_one(
    args: argparse.Namespace,
    model_dir: str,
    prompts: list[str],
    params: dict[str, Any],
    split: bool,
    logfile: TextIO,
) -> dict[str, Any]:
    env = server_env()
    env.update(
        BENCH_MODEL=model_dir,
        BENCH_CONCURRENCY=str(args.concurrency),
        BENCH_CONTEXT_LEN="2048",
        BENCH_MAX_NEW_TOKENS=str(args.max_new_tokens),
        BENCH_SPLIT_ATTENTION="1" if split else "0",
    )
    port = free_port()
    command = chatstream_command(port)
    name = "split by length" if split else "one attention group"
    with server(f"chatstream ({name})", command, env, port, logfile) as url:

        async def go(url: str = url) -> dict[str, Any]:
            warm = {"max_new_tokens": 4, "ignore_eos": True}
            await loadgen.run_load(
                url, concurrency=args.concurrency, requests=args.concurrency,
                prompts=prompts, generation_params=warm,
            )  # fmt: skip
            await loadgen.reset_lag(url)
            await loadgen.reset_steps(url)
            report, _ = await loadgen.run_load(
                url, concurrency=args.concurrency, requests=args.requests,
                prompts=prompts, generation_params=params,
            )  # fmt: skip
            return {
                **report.as_dict(),
                "lag": await loadgen.read_lag(url),
                "steps": await loadgen.read_steps(url),
            }

        row = {"system": name, **asyncio.run(go())}
    log(f"{name}: {row['tokens_per_s']} tok/s")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| attention | tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | decode step p50 "
        "| model busy | loop lag p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        steps, lag = r["steps"], r["lag"]
        lines.append(
            f"| {r['system']} | {r['tokens_per_s']:.1f} | {r['ttft_p50_ms']:,.0f} | "
            f"{r['ttft_p99_ms']:,.0f} | {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} | "
            f"{steps['decode_step_p50_ms']:.1f} | {100 * steps['busy']:.1f} % | "
            f"{lag['p99_ms']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a transformers model folder (default: SmolLM2)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--long-tokens", type=int, default=1500)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--log", default="/tmp/chatstream-bench-mixed.log", help="server output")
    args = parser.parse_args(argv)
    model_dir = args.model_dir
    if model_dir is None:
        from benchmarks.models import ensure_smollm2

        model_dir = str(ensure_smollm2())
    print(table(run(args, model_dir)))


if __name__ == "__main__":
    main()
