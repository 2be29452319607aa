"""A closed-loop load generator for chat streaming servers (asyncio + httpx).

C workers each send requests back to back (the next as soon as the previous reply ends) until
N requests have been sent or a duration has passed. Every worker has its own HTTP client, and
its cookies are dropped before each request, so that every request starts a fresh session
with an empty history: every request does the same work, on both servers.

Two response formats:

``sse`` (chatstream, ``Accept: text/event-stream``)
    ``started`` marks admission (queue wait = submit -> ``started``), each ``delta`` is text,
    ``done`` carries ``usage.completion_tokens`` (the token count), ``error`` is an error.
``openai`` (``/v1/chat/completions`` of chatstream, llama.cpp's server, transformers serve)
    ``stream: true``; the first chunk with content is the first token; each content chunk
    is one token, unless the last chunk's ``usage`` (``stream_options``) says how many.
    No queue-wait signal.
``original`` (the original ChatStream)
    every chunk is the whole reply so far followed by ``<::EOS::>``; one chunk per generated
    token, then (chatstream==0.2.0) one last chunk repeating the reply, which is not a token.
    No queue-wait signal.

Reported: aggregate generated tokens/s (all tokens / wall time from the first submit to the
last reply's end), time to first token p50/p99, inter-token latency p50/p99 (gaps between
consecutive text events of one reply, as the client sees them), queue wait p50/p99, rejected
(HTTP 429, or the original's 200 ``{"error": "too_many_requests"}``) and errors.

    python -m benchmarks.loadgen http://127.0.0.1:8000 -c 8 -n 16 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx

from benchmarks.lagprobe import percentile

__all__ = [
    "PROMPTS",
    "LoadReport",
    "RequestResult",
    "read_lag",
    "reset_lag",
    "run_load",
]

Format = Literal["sse", "original", "openai"]

#: The prompts every scenario sends, request i gets PROMPTS[i % len(PROMPTS)].
PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "Give me three tips for learning a new language.",
    "Who was Alan Turing?",
    "What is the difference between a virus and a bacterium?",
    "Suggest a name for a small bakery.",
    "How do I boil an egg?",
)

EOS = b"<::EOS::>"


@dataclasses.dataclass
class RequestResult:
    """What one request saw, times in seconds from ``submitted`` (perf_counter)."""

    index: int
    submitted: float
    ended: float = 0.0
    status: int = 0
    tokens: int = 0
    queue_wait: float | None = None
    ttft: float | None = None
    itl: list[float] = dataclasses.field(default_factory=list)
    rejected: bool = False
    error: str | None = None
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return not self.rejected and self.error is None


@dataclasses.dataclass
class LoadReport:
    """Aggregates of one load run; ``*_ms`` fields are milliseconds."""

    url: str
    fmt: str
    concurrency: int
    requests: int
    completed: int
    rejected: int
    errors: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    queue_wait_p50_ms: float | None
    queue_wait_p99_ms: float | None
    tokens_per_request: float | None
    error_samples: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def summarize(
    results: Sequence[RequestResult], *, url: str, fmt: str, concurrency: int, wall: float
) -> LoadReport:
    ok = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    waits = [r.queue_wait for r in ok if r.queue_wait is not None]
    itls = [gap for r in ok for gap in r.itl]
    errors = [r for r in results if r.error is not None]
    return LoadReport(
        url=url,
        fmt=fmt,
        concurrency=concurrency,
        requests=len(results),
        completed=len(ok),
        rejected=sum(r.rejected for r in results),
        errors=len(errors),
        tokens=tokens,
        wall_s=round(wall, 3),
        tokens_per_s=round(tokens / wall, 2) if wall > 0 else 0.0,
        ttft_p50_ms=_ms(percentile(ttfts, 50)),
        ttft_p99_ms=_ms(percentile(ttfts, 99)),
        itl_p50_ms=_ms(percentile(itls, 50)),
        itl_p99_ms=_ms(percentile(itls, 99)),
        queue_wait_p50_ms=_ms(percentile(waits, 50)),
        queue_wait_p99_ms=_ms(percentile(waits, 99)),
        tokens_per_request=round(tokens / len(ok), 2) if ok else None,
        error_samples=sorted({str(r.error) for r in errors})[:5],
    )


async def _sse_request(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], result: RequestResult
) -> None:
    headers = {"Accept": "text/event-stream"}
    async with client.stream("POST", url, json=body, headers=headers) as response:
        result.status = response.status_code
        if response.status_code != 200 or "text/event-stream" not in response.headers.get(
            "content-type", ""
        ):
            data = await response.aread()
            _classify_non_stream(response.status_code, data, result)
            return
        buffer = b""
        last_text: float | None = None
        async for piece in response.aiter_raw():
            now = time.perf_counter()
            buffer += piece
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if event.startswith(b"event: delta"):
                    if result.ttft is None:
                        result.ttft = now - result.submitted
                    elif last_text is not None:
                        result.itl.append(now - last_text)
                    last_text = now
                elif event.startswith(b"event: started"):
                    result.queue_wait = now - result.submitted
                elif event.startswith(b"event: done"):
                    # The data line only: resumable streams add an ``id:`` line after it.
                    (line,) = [x for x in event.split(b"\n") if x.startswith(b"data: ")]
                    data = json.loads(line[6:])
                    result.tokens = int(data["usage"]["completion_tokens"])
                    result.finish_reason = data.get("finish_reason")
                elif event.startswith(b"event: error"):
                    result.error = event.decode(errors="replace")[:200]
        if result.finish_reason is None and result.error is None:
            result.error = "stream ended without a done event"


async def _original_request(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    result: RequestResult,
    final_chunk_repeats: bool,
) -> None:
    async with client.stream("POST", url, json=body) as response:
        result.status = response.status_code
        if response.status_code != 200 or "json" in response.headers.get("content-type", ""):
            data = await response.aread()
            _classify_non_stream(response.status_code, data, result)
            return
        buffer = b""
        arrivals: list[float] = []
        async for piece in response.aiter_raw():
            now = time.perf_counter()
            buffer += piece
            while EOS in buffer:
                _, buffer = buffer.split(EOS, 1)
                arrivals.append(now)
        if final_chunk_repeats and arrivals:
            arrivals.pop()  # the whole reply once more: not a token
        result.tokens = len(arrivals)
        if arrivals:
            result.ttft = arrivals[0] - result.submitted
            result.itl = [b - a for a, b in itertools.pairwise(arrivals)]
        result.finish_reason = "stream_end"


async def _openai_request(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], result: RequestResult
) -> None:
    async with client.stream("POST", url, json=body) as response:
        result.status = response.status_code
        if response.status_code != 200:
            _classify_non_stream(response.status_code, await response.aread(), result)
            return
        arrivals: list[float] = []
        usage_tokens: int | None = None
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                result.error = str(chunk["error"])[:200]
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    arrivals.append(now)
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
            if chunk.get("usage"):
                usage_tokens = int(chunk["usage"]["completion_tokens"])
        result.tokens = usage_tokens if usage_tokens is not None else len(arrivals)
        if arrivals:
            result.ttft = arrivals[0] - result.submitted
            result.itl = [b - a for a, b in itertools.pairwise(arrivals)]
        if result.finish_reason is None and result.error is None:
            result.error = "stream ended without a finish reason"


def _classify_non_stream(status: int, data: bytes, result: RequestResult) -> None:
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if status == 429 or (isinstance(parsed, dict) and parsed.get("error") == "too_many_requests"):
        result.rejected = True
    else:
        result.error = f"HTTP {status}: {data[:200]!r}"


async def run_load(
    base_url: str,
    *,
    concurrency: int,
    requests: int | None = None,
    duration: float | None = None,
    fmt: Format = "sse",
    prompts: Sequence[str] = PROMPTS,
    generation_params: dict[str, Any] | None = None,
    path: str = "/chat_stream",
    final_chunk_repeats: bool = True,
    timeout: float = 600.0,
    openai_body: dict[str, Any] | None = None,
) -> tuple[LoadReport, list[RequestResult]]:
    """Run the closed loop; stop after ``requests`` requests or ``duration`` seconds
    (whichever comes first; at least one of them).

    ``openai_body``: the fields of every OpenAI request besides its messages (``model``,
    ``max_tokens``, ...), for ``fmt="openai"`` (whose ``path`` defaults to the OpenAI one).
    """
    if requests is None and duration is None:
        raise ValueError("give requests or duration")
    if fmt == "openai" and path == "/chat_stream":
        path = "/v1/chat/completions"
    url = base_url.rstrip("/") + path
    results: list[RequestResult] = []
    next_index = 0
    started = time.perf_counter()
    deadline = None if duration is None else started + duration

    def take() -> int | None:
        nonlocal next_index
        if requests is not None and next_index >= requests:
            return None
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        next_index += 1
        return next_index - 1

    async def worker() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            while (index := take()) is not None:
                client.cookies.clear()  # a fresh session: an empty history
                prompt = prompts[index % len(prompts)]
                body: dict[str, Any] = {"user_input": prompt}
                if generation_params:
                    body["generation_params"] = dict(generation_params)
                if fmt == "openai":
                    message = {"role": "user", "content": prompt}
                    body = {**(openai_body or {}), "messages": [message], "stream": True}
                result = RequestResult(index=index, submitted=time.perf_counter())
                results.append(result)
                try:
                    if fmt == "sse":
                        await _sse_request(client, url, body, result)
                    elif fmt == "openai":
                        await _openai_request(client, url, body, result)
                    else:
                        await _original_request(client, url, body, result, final_chunk_repeats)
                except httpx.HTTPError as error:
                    result.error = f"{type(error).__name__}: {error}"
                result.ended = time.perf_counter()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    ends = [r.ended for r in results if r.ended] or [time.perf_counter()]
    wall = max(ends) - started
    report = summarize(results, url=url, fmt=fmt, concurrency=concurrency, wall=wall)
    return report, results


async def _post(base_url: str, path: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        (await client.post(base_url.rstrip("/") + path)).raise_for_status()


async def _get_json(base_url: str, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(base_url.rstrip("/") + path)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


async def reset_lag(base_url: str) -> None:
    await _post(base_url, "/bench/lag/reset")


async def read_lag(base_url: str) -> dict[str, Any]:
    return await _get_json(base_url, "/bench/lag")


async def reset_steps(base_url: str) -> None:
    await _post(base_url, "/bench/steps/reset")


async def read_steps(base_url: str) -> dict[str, Any]:
    return await _get_json(base_url, "/bench/steps")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-n", "--requests", type=int, default=None)
    parser.add_argument("-d", "--duration", type=float, default=None)
    parser.add_argument("--format", choices=["sse", "original"], default="sse")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="sse only: sent as generation_params with ignore_eos (fixed-length replies)",
    )
    parser.add_argument("--lag", action="store_true", help="reset and read /bench/lag")
    parser.add_argument(
        "--steps", action="store_true", help="chatstream only: reset and read /bench/steps"
    )
    args = parser.parse_args(argv)
    if args.requests is None and args.duration is None:
        args.requests = 2 * args.concurrency
    params = None
    if args.format == "sse" and args.max_new_tokens is not None:
        params = {"max_new_tokens": args.max_new_tokens, "ignore_eos": True}

    async def go() -> dict[str, Any]:
        if args.lag:
            await reset_lag(args.url)
        if args.steps:
            await reset_steps(args.url)
        report, _ = await run_load(
            args.url,
            concurrency=args.concurrency,
            requests=args.requests,
            duration=args.duration,
            fmt=args.format,
            generation_params=params,
        )
        out = report.as_dict()
        if args.lag:
            out["loop_lag"] = await read_lag(args.url)
        if args.steps:
            out["model_thread"] = await read_steps(args.url)
        return out

    json.dump(asyncio.run(go()), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
