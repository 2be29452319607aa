"""The chatstream app the benchmark serves: ``create_app`` plus an event-loop lag probe.

    BENCH_MODEL=smollm2 BENCH_CONCURRENCY=8 \
        python -m chatstream.server --factory benchmarks.chatstream_app:app_factory --port 8000

Environment (all optional):

=========================  ==============================================================
``BENCH_MODEL``            ``smollm2`` (default: the embedded SmolLM2-135M-Instruct) or a
                           model folder (the tiny test model, a random-init folder)
``BENCH_DEVICE``           ``cpu`` (default), ``cuda``
``BENCH_DTYPE``            ``auto`` (float32 on cpu, bfloat16 on cuda), ``float32``, ...
``BENCH_CONCURRENCY``      ``num_of_concurrent_executions`` (default 8)
``BENCH_QUEUE_SIZE``       ``max_queue_size`` (default 4096: the closed loop never fills it)
``BENCH_MAX_NEW_TOKENS``   default ``max_new_tokens`` (64; requests may send their own)
``BENCH_CONTEXT_LEN``      ``context_len`` (default: ChatStream's, 1024)
``BENCH_TORCH_THREADS``    torch threads of the model thread (default 1)
``BENCH_LAG_INTERVAL_MS``  the probe's sleep (default 5)
``BENCH_SPLIT_ATTENTION``  ``0``: decode attention in one group, never split by length
``BENCH_PREFIX_CACHE``     ``0``: no prefix reuse (``prefix_cache=False``)
``BENCH_PREFIX_CACHE_MB``  host memory for the prefix cache (``prefix_cache_mb``, 1024)
``BENCH_QUANTIZE``         ``auto`` (default: as ``chatstream serve``), ``int8``, ``bf16``,
                           ``none``
``BENCH_CUDA_GRAPHS``      ``auto`` (default), ``1``: decode steps replayed from CUDA graphs
                           (on a CPU: the re-running stand-in, which exercises the same
                           bookkeeping; for the GPU script's dry run), ``0``: eager
=========================  ==============================================================

Sampling is greedy (``temperature=0``). Besides every chatstream route the app answers
``POST /bench/lag/reset`` and ``GET /bench/lag`` (see :mod:`benchmarks.lagprobe`), and
``POST /bench/steps/reset`` and ``GET /bench/steps``: how busy the model thread is (see
:mod:`benchmarks.steptrace`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette

from benchmarks.lagprobe import LagProbe
from benchmarks.steptrace import StepTrace
from chatstream import ChatStream
from chatstream.adapters.starlette import create_app

__all__ = ["app_factory", "settings"]


def settings() -> dict[str, Any]:
    env = os.environ.get
    return {
        "model": env("BENCH_MODEL", "smollm2"),
        "device": env("BENCH_DEVICE", "cpu"),
        "dtype": env("BENCH_DTYPE", "auto"),
        "concurrency": int(env("BENCH_CONCURRENCY", "8")),
        "queue_size": int(env("BENCH_QUEUE_SIZE", "4096")),
        "max_new_tokens": int(env("BENCH_MAX_NEW_TOKENS", "64")),
        "context_len": int(env("BENCH_CONTEXT_LEN", "0")) or None,
        "torch_threads": int(env("BENCH_TORCH_THREADS", "1")),
        "lag_interval": float(env("BENCH_LAG_INTERVAL_MS", "5")) / 1000.0,
        "split_attention": env("BENCH_SPLIT_ATTENTION", "1") != "0",
        "prefix_cache": env("BENCH_PREFIX_CACHE", "1") != "0",
        "prefix_cache_mb": int(env("BENCH_PREFIX_CACHE_MB", "1024")),
        "quantize": env("BENCH_QUANTIZE", "auto"),
        "cuda_graphs": {"1": True, "0": False}.get(env("BENCH_CUDA_GRAPHS", "auto"), "auto"),
    }


def app_factory() -> Starlette:
    import torch

    from benchmarks.models import is_embedded, load_bench_model

    s = settings()
    torch.set_num_threads(s["torch_threads"])
    if not s["split_attention"]:
        from chatstream.adapters.model import transformers_backend

        transformers_backend.splittable = lambda model: False  # type: ignore[attr-defined]
    if s["cuda_graphs"] is True and not s["device"].startswith("cuda"):
        from chatstream.adapters.model import transformers_backend
        from chatstream.adapters.model.decode_graphs import RerunCapturer

        transformers_backend.capturer_for = lambda option, device: (  # type: ignore[attr-defined]
            RerunCapturer() if option else None
        )
    model, tokenizer = load_bench_model(s["model"], device=s["device"], dtype=s["dtype"])
    quantize = s["quantize"]
    if quantize == "auto":
        from chatstream.adapters.model.quantization import auto_quantize

        quantize = auto_quantize(device=s["device"], embedded=is_embedded(s["model"]))
    extra: dict[str, Any] = {}
    if s["context_len"]:
        extra["context_len"] = s["context_len"]
    chat_stream = ChatStream(
        model=model,
        tokenizer=tokenizer,
        device=s["device"],
        num_of_concurrent_executions=s["concurrency"],
        max_queue_size=s["queue_size"],
        max_new_tokens=s["max_new_tokens"],
        temperature=0.0,
        torch_threads=s["torch_threads"],
        prefix_cache=s["prefix_cache"],
        prefix_cache_mb=s["prefix_cache_mb"],
        quantize=quantize,
        cuda_graphs=s["cuda_graphs"],
        **extra,
    )
    app = create_app(chat_stream, secret_key="benchmark secret")
    probe = LagProbe(s["lag_interval"])
    app.router.routes.extend(probe.routes())
    trace = StepTrace()
    app.router.routes.extend(trace.routes())
    serve_chat_stream = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The probe runs beside the ChatStream for the whole life of the server.
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(probe.run)
            async with serve_chat_stream(app):
                trace.wrap(chat_stream.backend)
                yield
            tasks.cancel_scope.cancel()

    app.router.lifespan_context = lifespan
    return app
