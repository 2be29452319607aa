"""Multi-turn conversations: what prefix reuse buys, against no reuse and transformers serve.

    python -m benchmarks.multiturn [--turns 12] [--users 8] [--max-tokens 64]
        [--transformers-serve /path/to/venv/bin/transformers] [--out results.json]

Three scenarios on SmolLM2-135M-Instruct (fp32, one torch thread, greedy, replies of at most
``--max-tokens`` tokens ending at EOS):

1. **One conversation** of ``--turns`` turns, TTFT at every turn, through the session route
   (``/chat_stream``: the server keeps the history) and through ``/v1/chat/completions`` (the
   client resends it).
2. **Several users** (``--users``, at C = users), each in a conversation of ``--turns`` turns,
   all at once: TTFT p50 and p90 over every turn after the first, and tokens/s.
3. **Unique prompts** at C = 8 (nothing to reuse but a system prompt): tokens/s, to show what
   the bookkeeping costs when it cannot help.

4. **More conversations than slots** (``--rotate``, off by default): ``--users`` users take
   turns one at a time on a server of 2 slots, so every returning conversation's slot was
   given to another: TTFT p50 of turns 2+ with host memory (``prefix_cache_mb``, default)
   against ``BENCH_PREFIX_CACHE_MB=0`` (slots only) and no reuse.

Systems, one after another on the same machine: chatstream with its prefix cache, chatstream
with ``BENCH_PREFIX_CACHE=0`` (``prefix_cache=False``), and, when ``--transformers-serve``
names its executable (a venv with ``transformers[serving]==5.24.0``), ``transformers serve
--continuous-batching`` (OpenAI route only: it keeps no history). Figures are printed as
tables; compare only within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lagprobe import percentile
from benchmarks.models import ensure_smollm2
from benchmarks.peers import transformers_serve
from benchmarks.processes import chatstream_command, free_port, log, server, server_env

QUESTIONS = (
    "Hello! Can you help me plan a small vegetable garden?",
    "Which vegetables grow well in a sunny spot?",
    "How often should I water tomatoes?",
    "What about lettuce in hot weather?",
    "Can I grow herbs next to the tomatoes?",
    "Which herbs are easiest for a beginner?",
    "How do I keep snails away without chemicals?",
    "When should I start seeds indoors?",
    "What soil mix do you recommend for seedlings?",
    "How do I harden off seedlings before planting?",
    "Any tips for composting kitchen scraps?",
    "Thanks! Can you sum up the plan in three lines?",
)


def user_questions(user: int, turns: int) -> list[str]:
    """User ``user``'s messages: the questions in their own order, their name first."""
    order = [QUESTIONS[(user + i) % len(QUESTIONS)] for i in range(turns)]
    order[0] = f"My name is user {user}. {order[0]}"
    return order


# ----------------------------------------------------------------------------- one turn


async def session_turn(
    client: httpx.AsyncClient, url: str, text: str, max_tokens: int
) -> dict[str, Any]:
    """One turn through ``/chat_stream`` (the session keeps the history)."""
    body = {"user_input": text, "generation_params": {"max_new_tokens": max_tokens}}
    started = time.perf_counter()
    ttft = None
    done: dict[str, Any] = {}
    headers = {"Accept": "text/event-stream"}
    async with client.stream("POST", url + "/chat_stream", json=body, headers=headers) as reply:
        reply.raise_for_status()
        buffer = b""
        async for piece in reply.aiter_raw():
            buffer += piece
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if event.startswith(b"event: delta") and ttft is None:
                    ttft = time.perf_counter() - started
                elif event.startswith(b"event: done"):
                    done = json.loads(event.split(b"data: ", 1)[1])
                elif event.startswith(b"event: error"):
                    raise RuntimeError(event.decode(errors="replace"))
    usage = done.get("usage", {})
    return {
        "ttft_ms": None if ttft is None else ttft * 1000,
        "seconds": time.perf_counter() - started,
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": usage.get("cached_tokens"),
        "completion_tokens": usage.get("completion_tokens", 0),
    }


async def openai_turn(
    client: httpx.AsyncClient, url: str, model: str, history: list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    """One turn through ``/v1/chat/completions``, streamed; the reply joins ``history``."""
    body = {
        "model": model,
        "messages": history,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    started = time.perf_counter()
    ttft = None
    text: list[str] = []
    chunks = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{reply.status_code}: {(await reply.aread())[:300]!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            for choice in data.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    chunks += 1
                    text.append(content)
                    if ttft is None:
                        ttft = time.perf_counter() - started
    history.append({"role": "assistant", "content": "".join(text)})
    return {
        "ttft_ms": None if ttft is None else ttft * 1000,
        "seconds": time.perf_counter() - started,
        "completion_tokens": chunks,  # one content chunk per token on both servers
    }


# ----------------------------------------------------------------------------- scenarios


async def conversation(
    url: str, route: str, model: str, user: int, turns: int, max_tokens: int, verbose: bool
) -> list[dict[str, Any]]:
    """User ``user``'s whole conversation through ``route``: a row per turn."""
    rows = []
    async with httpx.AsyncClient(timeout=600) as client:
        history: list[dict[str, str]] = []
        for turn, question in enumerate(user_questions(user, turns), 1):
            if route == "session":
                row = await session_turn(client, url, question, max_tokens)
            else:
                history.append({"role": "user", "content": question})
                row = await openai_turn(client, url, model, history, max_tokens)
            rows.append({"turn": turn, **row})
            if verbose:
                log(f"  {route} turn {turn}: TTFT {row['ttft_ms']:.0f} ms")
    return rows


async def one_conversation(
    url: str, route: str, model: str, turns: int, max_tokens: int
) -> list[dict[str, Any]]:
    return await conversation(url, route, model, 0, turns, max_tokens, verbose=True)


async def many_users(
    url: str, route: str, model: str, users: int, turns: int, max_tokens: int
) -> dict[str, Any]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(conversation(url, route, model, i, turns, max_tokens, False) for i in range(users))
    )
    wall = time.perf_counter() - started
    later = [r["ttft_ms"] for rows in results for r in rows if r["turn"] > 1 and r["ttft_ms"]]
    tokens = sum(r["completion_tokens"] for rows in results for r in rows)
    return {
        "ttft_p50_ms": percentile(later, 50),
        "ttft_p90_ms": percentile(later, 90),
        "tokens_per_s": tokens / wall,
        "wall_s": wall,
        "turns": sum(len(rows) for rows in results),
    }


async def unique_prompts(
    url: str, concurrency: int, requests: int, max_tokens: int
) -> dict[str, Any]:
    """Fresh sessions, each prompt different from its first words on."""

    async def worker(indices: list[int]) -> list[dict[str, Any]]:
        out = []
        async with httpx.AsyncClient(timeout=600) as client:
            for i in indices:
                client.cookies.clear()
                text = f"Request {i * 7919 % 10007}: {QUESTIONS[i % len(QUESTIONS)]}"
                out.append(await session_turn(client, url, text, max_tokens))
        return out

    started = time.perf_counter()
    chunks = [list(range(w, requests, concurrency)) for w in range(concurrency)]
    results = await asyncio.gather(*(worker(c) for c in chunks))
    wall = time.perf_counter() - started
    rows = [r for rs in results for r in rs]
    return {
        "tokens_per_s": sum(r["completion_tokens"] for r in rows) / wall,
        "ttft_p50_ms": percentile([r["ttft_ms"] for r in rows if r["ttft_ms"]], 50),
        "cached_mean": statistics.mean(r["cached_tokens"] or 0 for r in rows),
    }


async def rotation(url: str, users: int, turns: int, max_tokens: int) -> dict[str, Any]:
    """Users take turns one at a time, round-robin: each turn finds its slot given away."""
    clients = [httpx.AsyncClient(timeout=600) for _ in range(users)]
    rows = []
    try:
        questions = [user_questions(user, turns) for user in range(users)]
        for turn in range(turns):
            for user, client in enumerate(clients):
                row = await session_turn(client, url, questions[user][turn], max_tokens)
                rows.append({"turn": turn + 1, **row})
    finally:
        for client in clients:
            await client.aclose()
    later = [r for r in rows if r["turn"] > 1]
    return {
        "ttft_p50_ms": percentile([r["ttft_ms"] for r in later if r["ttft_ms"]], 50),
        "ttft_p90_ms": percentile([r["ttft_ms"] for r in later if r["ttft_ms"]], 90),
        "cached_mean": statistics.mean(r["cached_tokens"] or 0 for r in later),
        "prompt_mean": statistics.mean(r["prompt_tokens"] or 0 for r in later),
    }


def rotate(args: argparse.Namespace, logfile: Any) -> str:
    systems = (
        ("chatstream, host memory", "1", "1024"),
        ("chatstream, slots only", "1", "0"),
        ("chatstream, no prefix cache", "0", "0"),
    )
    lines = [
        f"## {args.users} users taking turns on 2 slots, {args.turns} turns each",
        "",
        "| system | TTFT p50 (ms), turns 2+ | TTFT p90 | cached / prompt tokens |",
        "|---|---|---|---|",
    ]
    for name, prefix, mib in systems:
        log(name)
        port = free_port()
        env = {
            **server_env(),
            "BENCH_MODEL": "smollm2",
            "BENCH_CONCURRENCY": "2",
            "BENCH_MAX_NEW_TOKENS": str(args.max_tokens),
            "BENCH_CONTEXT_LEN": str(args.context_len),
            "BENCH_PREFIX_CACHE": prefix,
            "BENCH_PREFIX_CACHE_MB": mib,
        }
        with server(name, chatstream_command(port), env, port, logfile) as url:
            asyncio.run(warm_up(url, "session", "chatstream"))
            row = asyncio.run(rotation(url, args.users, args.turns, args.max_tokens))
        log(f"  {row}")
        lines.append(
            f"| {name} | {row['ttft_p50_ms']:,.0f} | {row['ttft_p90_ms']:,.0f} | "
            f"{row['cached_mean']:.0f} / {row['prompt_mean']:.0f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- servers


async def warm_up(url: str, route: str, model: str) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        for _ in range(2):  # the first forward passes allocate and pick kernels
            if route == "session":
                client.cookies.clear()
                await session_turn(client, url, "Hi!", 8)
            else:
                await openai_turn(client, url, model, [{"role": "user", "content": "Hi!"}], 8)


def measure(url: str, routes: list[str], model: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for route in routes:
        asyncio.run(warm_up(url, route, model))
        out[f"one/{route}"] = asyncio.run(
            one_conversation(url, route, model, args.turns, args.max_tokens)
        )
        out[f"users/{route}"] = asyncio.run(
            many_users(url, route, model, args.users, args.turns, args.max_tokens)
        )
        log(f"  {route}, {args.users} users: {out[f'users/{route}']}")
    if "session" in routes:
        out["unique"] = asyncio.run(unique_prompts(url, 8, 32, args.max_tokens))
        log(f"  unique prompts: {out['unique']}")
    return out


# ----------------------------------------------------------------------------- report


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"## One conversation, {args.turns} turns: TTFT (ms) at each turn", ""]
    shown = [t for t in (1, 2, 4, 8, 12, args.turns) if t <= args.turns]
    shown = sorted(set(shown))
    lines.append(
        "| system, route | " + " | ".join(str(t) for t in shown) + " | turn last / turn 2 |"
    )
    lines.append("|---" * (len(shown) + 2) + "|")
    for system, data in results.items():
        for key, rows in data.items():
            if not key.startswith("one/"):
                continue
            ttft = {r["turn"]: r["ttft_ms"] for r in rows}
            ratio = ttft[args.turns] / ttft[2] if args.turns >= 2 else float("nan")
            cells = " | ".join(f"{ttft[t]:,.0f}" for t in shown)
            lines.append(f"| {system}, {key[4:]} | {cells} | {ratio:.2f} |")
    lines += ["", f"## {args.users} users x {args.turns} turns at C = {args.users}", ""]
    lines.append("| system, route | TTFT p50 (ms), turns 2+ | TTFT p90 | tokens/s | wall (s) |")
    lines.append("|---|---|---|---|---|")
    for system, data in results.items():
        for key, row in data.items():
            if key.startswith("users/"):
                lines.append(
                    f"| {system}, {key[6:]} | {row['ttft_p50_ms']:,.0f} | "
                    f"{row['ttft_p90_ms']:,.0f} | {row['tokens_per_s']:.1f} | {row['wall_s']:.0f} |"
                )
    lines += ["", "## Unique prompts at C = 8, 32 requests", ""]
    lines.append("| system | tokens/s | TTFT p50 (ms) | cached tokens per request |")
    lines.append("|---|---|---|---|")
    for system, data in results.items():
        if "unique" in data:
            row = data["unique"]
            lines.append(
                f"| {system} | {row['tokens_per_s']:.1f} | {row['ttft_p50_ms']:,.0f} | "
                f"{row['cached_mean']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--context-len", type=int, default=4096)
    parser.add_argument("--transformers-serve", metavar="EXECUTABLE")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--rotate", action="store_true", help="only scenario 4: more conversations than slots"
    )
    args = parser.parse_args(argv)
    model_dir = ensure_smollm2()
    results: dict[str, dict[str, Any]] = {}
    logfile = open(os.devnull, "w") if args.out is None else open(args.out.with_suffix(".log"), "w")  # noqa: SIM115
    if args.rotate:
        with logfile:
            print(rotate(args, logfile))
        return
    with logfile:
        for name, prefix in (("chatstream", "1"), ("chatstream, no prefix cache", "0")):
            log(name)
            port = free_port()
            env = {
                **server_env(),
                "BENCH_MODEL": "smollm2",
                "BENCH_CONCURRENCY": str(max(args.users, 8)),
                "BENCH_MAX_NEW_TOKENS": str(args.max_tokens),
                "BENCH_CONTEXT_LEN": str(args.context_len),
                "BENCH_PREFIX_CACHE": prefix,
            }
            with server(name, chatstream_command(port), env, port, logfile) as url:
                results[name] = measure(url, ["session", "openai"], "chatstream", args)
        if args.transformers_serve:
            log("transformers serve")
            port = free_port()
            with transformers_serve(args.transformers_serve, model_dir, port, logfile) as url:
                results["transformers serve"] = measure(url, ["openai"], str(model_dir), args)
    text = report(results, args)
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
        args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
