"""The ORIGINAL ChatStream (``chatstream==0.2.0`` from PyPI) served the way its README does,
with an event-loop lag probe, for the side-by-side benchmark.

Runs in its own venv (``benchmarks/setup_original.sh``), where ``import chatstream`` is the
original package, never ours:

    BENCH_MODEL_DIR=/path/to/SmolLM2-135M-Instruct BENCH_CONCURRENCY=8 \
        benchmarks/.venv-original/bin/python -m benchmarks.original_app --port 8001

Workarounds it needs (each is marked ``WORKAROUND`` below):

1. A prompt class for ChatML models. 0.2.0 ships only RedPajama and rinna prompt classes.
   Its reply slicing cuts ``len(prompt)`` characters off
   ``tokenizer.decode(prompt + reply ids, skip_special_tokens=True)``; ChatML's markers are
   special tokens that the decode drops, so the cut would eat the reply's first characters.
   ``get_skip_len`` here measures the prompt as the tokenizer round-trips it (memoized, so
   the benchmark adds no per-token cost of its own).
2. Fixed-length replies: ``chat_generator.params["stop_ids"] = []`` (default: the EOS id),
   and no stop strings.
3. Its default logger prints debug lines per request: pass a logger at WARNING.
4. ``start_queue_worker()`` turns SIGINT into ``os._exit(0)``: stop the server with SIGTERM.
5. 0.2.0's stream is the whole reply so far, once per token, with no delimiter between
   chunks (``<::EOS::>`` came later). The app appends ``<::EOS::>`` to each chunk so the load
   generator can count chunks; 0.2.0 ends each reply with one more chunk repeating it.
6. fastsession's cookie defaults to ``secure=True``; over plain HTTP the benchmark sets it off
   (the load generator drops cookies before every request anyway).

Environment: ``BENCH_MODEL_DIR`` (a transformers folder), ``BENCH_DEVICE`` (cpu),
``BENCH_CONCURRENCY`` (8), ``BENCH_QUEUE_SIZE`` (4096), ``BENCH_MAX_NEW_TOKENS`` (64),
``BENCH_TORCH_THREADS`` (1), ``BENCH_LAG_INTERVAL_MS`` (5).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import anyio
import torch
import transformers
from fastapi import FastAPI, Request
from fastsession import FastSessionMiddleware, MemoryStore
from starlette.responses import StreamingResponse

from benchmarks.lagprobe import LagProbe
from chatstream import AbstractChatPrompt, ChatStream  # the ORIGINAL package, in its venv

EOS = "<::EOS::>"


def chatml_prompt_class(tokenizer: Any) -> type[AbstractChatPrompt]:
    """WORKAROUND 1: a ChatML prompt class rendered by the tokenizer's chat template (the same
    text our chatstream renders), with a ``get_skip_len`` that survives special tokens."""

    @functools.lru_cache(maxsize=4096)
    def render(messages: tuple[tuple[str, str], ...], open_reply: bool) -> str:
        return str(
            tokenizer.apply_chat_template(
                [{"role": r, "content": c} for r, c in messages],
                tokenize=False,
                add_generation_prompt=open_reply,
            )
        )

    @functools.lru_cache(maxsize=4096)
    def round_trip_len(prompt: str) -> int:
        ids = tokenizer(prompt).input_ids
        return len(tokenizer.decode(ids, skip_special_tokens=True))

    class ChatPromptChatML(AbstractChatPrompt):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.set_requester("user")
            self.set_responder("assistant")

        def get_stop_strs(self) -> list[str]:
            return []  # WORKAROUND 2: fixed-length replies

        def build_initial_prompt(self, chat_prompt: Any) -> None:
            pass

        def create_prompt(self, opts: dict[str, Any] | None = None) -> str:
            messages: list[tuple[str, str]] = []
            open_reply = False
            for content in self.get_contents(opts or {}):
                message = content.get_message()
                if message is None:
                    open_reply = True
                    continue
                messages.append((content.get_role(), message))
            return render(tuple(messages), open_reply)

        def get_skip_len(self, omit_last_message: bool = False) -> int:
            prompt = self.create_prompt({"omit_last_message": omit_last_message})
            return round_trip_len(prompt)

    return ChatPromptChatML


def build_app() -> FastAPI:
    env = os.environ.get
    model_dir = env("BENCH_MODEL_DIR")
    if not model_dir:
        raise SystemExit("set BENCH_MODEL_DIR to a transformers model folder")
    device = env("BENCH_DEVICE", "cpu")
    concurrency = int(env("BENCH_CONCURRENCY", "8"))
    torch.set_num_threads(int(env("BENCH_TORCH_THREADS", "1")))

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(device).eval()

    logger = logging.getLogger("chatstream-original")  # WORKAROUND 3
    logger.setLevel(logging.WARNING)
    logger.addHandler(logging.StreamHandler())

    chat_stream = ChatStream(
        model=model,
        tokenizer=tokenizer,
        device=device,
        num_of_concurrent_executions=concurrency,
        max_queue_size=int(env("BENCH_QUEUE_SIZE", "4096")),
        chat_prompt_clazz=chatml_prompt_class(tokenizer),
        max_new_tokens=int(env("BENCH_MAX_NEW_TOKENS", "64")),
        temperature=0.0,  # below 1e-4: argmax, as ours
        logger=logger,
    )
    chat_stream.chat_generator.params["stop_ids"] = []  # WORKAROUND 2

    probe = LagProbe(float(env("BENCH_LAG_INTERVAL_MS", "5")) / 1000.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The README starts the queue worker in a startup hook; a lifespan does the same.
        await chat_stream.start_queue_worker()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(probe.run)
            yield
            tasks.cancel_scope.cancel()
        chat_stream.queue_worker_task.cancel()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(
        FastSessionMiddleware,
        secret_key="benchmark secret",
        store=MemoryStore(),
        http_only=True,
        secure=False,  # WORKAROUND 6
        max_age=0,
        session_cookie="sid",
        session_object="session",
    )

    @app.post("/chat_stream")
    async def stream_api(request: Request) -> Any:
        response = await chat_stream.handle_starlette_request(request)
        if isinstance(response, StreamingResponse):
            response.body_iterator = _delimited(response.body_iterator)  # WORKAROUND 5
        return response

    app.router.routes.extend(probe.routes())
    return app


async def _delimited(chunks: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for chunk in chunks:
        text = chunk.decode() if isinstance(chunk, bytes) else str(chunk)
        yield text + EOS


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="the original ChatStream, for benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # WORKAROUND 4: uvicorn stops gracefully on SIGTERM; the worker took SIGINT.
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning", loop="asyncio")


if __name__ == "__main__":
    main()
