"""Event-loop lag inside a server: a task that sleeps ``interval`` seconds in a loop and records
how late each wake-up is.

Both benchmark servers (ours and the original) run one in their lifespan and expose it as

    POST /bench/lag/reset   forget the samples so far
    GET  /bench/lag         {"p50_ms", "p99_ms", "max_ms", "mean_ms", "samples", "interval_ms"}

A loop that never blocks wakes the probe within about a millisecond (the timer's granularity);
a loop that runs a forward pass between two awaits wakes it a whole forward pass late.

This module imports only anyio and starlette, so the original's venv (FastAPI) runs it too.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["LagProbe", "percentile", "probe_routes"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class LagProbe:
    """Measures how late a ``sleep(interval)`` wakes up, forever, until cancelled."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._samples = array("d")

    async def run(self) -> None:
        interval = self.interval
        while True:
            before = anyio.current_time()
            await anyio.sleep(interval)
            self._samples.append(max(0.0, anyio.current_time() - before - interval))

    def reset(self) -> None:
        self._samples = array("d")

    def summary(self) -> dict[str, float | int | None]:
        samples = self._samples.tolist()

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return {
            "p50_ms": ms(percentile(samples, 50)),
            "p99_ms": ms(percentile(samples, 99)),
            "max_ms": ms(max(samples) if samples else None),
            "mean_ms": ms(sum(samples) / len(samples) if samples else None),
            "samples": len(samples),
            "interval_ms": self.interval * 1000.0,
        }

    def routes(self) -> list[Route]:
        return probe_routes("/bench/lag", self.reset, self.summary)


def probe_routes(
    path: str, reset: Callable[[], None], summary: Callable[[], Mapping[str, Any]]
) -> list[Route]:
    """``POST {path}/reset`` and ``GET {path}`` for a probe's ``reset`` and ``summary``."""

    async def reset_route(request: Request) -> JSONResponse:
        reset()
        return JSONResponse({"ok": True})

    async def read_route(request: Request) -> JSONResponse:
        return JSONResponse(dict(summary()))

    return [
        Route(f"{path}/reset", reset_route, methods=["POST"]),
        Route(path, read_route, methods=["GET"]),
    ]
