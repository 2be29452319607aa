"""How busy the model thread is: a wrapper that times every step a backend runs.

The chatstream benchmark server wraps its backend and exposes the figures as

    POST /bench/steps/reset   forget the steps so far
    GET  /bench/steps         {"steps", "busy", "gap_p50_ms", "gap_p99_ms",
                               "decode_step_p50_ms", "mean_batch"}

``busy`` is the time spent in ``run_step`` over the wall time from the first step's start to
the last step's end; ``gap`` is the model's wait between the end of a step and the start of
the next (the event loop's turnaround: the result to the engine, the next plan back);
``decode_step`` times the steps without a prefill; ``mean_batch`` counts the requests a step
advances (decoding rows plus prefill chunks); ``graph_steps`` and ``eager_steps`` count the
decode forwards replayed from a CUDA graph and run eagerly (the transformers backend's
counters; absent for other backends).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from starlette.routing import Route

from benchmarks.lagprobe import percentile, probe_routes
from chatstream.core import StepPlan

__all__ = ["StepTrace"]


class StepTrace:
    """Records ``(start, end, prefill chunks, decode rows)`` of every step."""

    def __init__(self) -> None:
        self._steps: list[tuple[float, float, int, int]] = []
        self._backend: Any = None
        self._counted = (0, 0)

    def _counts(self) -> tuple[int, int]:
        backend = self._backend
        return (
            int(getattr(backend, "graph_decode_steps", 0)),
            int(getattr(backend, "eager_decode_steps", 0)),
        )

    def wrap(self, backend: Any) -> None:
        """Time every ``backend.run_step`` from now on (it runs in the model thread)."""
        run_step = backend.run_step
        self._backend = backend
        self._counted = self._counts()

        def timed(plan: StepPlan) -> Any:
            start = time.perf_counter()
            try:
                return run_step(plan)
            finally:
                # list.append is atomic: the event loop may read or reset meanwhile.
                self._steps.append(
                    (start, time.perf_counter(), len(plan.prefill), len(plan.decode))
                )

        backend.run_step = timed

    def reset(self) -> None:
        self._steps = []
        self._counted = self._counts()

    def summary(self) -> dict[str, float | int | None]:
        steps = list(self._steps)
        if not steps:
            return {"steps": 0}
        busy = sum(end - start for start, end, _, _ in steps)
        wall = steps[-1][1] - steps[0][0]
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(steps)]
        decode = [end - start for start, end, prefill, _ in steps if not prefill]

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return {
            "steps": len(steps),
            "busy": round(busy / wall, 4) if wall > 0 else None,
            "gap_p50_ms": ms(percentile(gaps, 50)),
            "gap_p99_ms": ms(percentile(gaps, 99)),
            "decode_step_p50_ms": ms(percentile(decode, 50)),
            "mean_batch": round(sum(p + d for _, _, p, d in steps) / len(steps), 2),
            **(
                {}
                if not hasattr(self._backend, "graph_decode_steps")
                else {
                    "graph_steps": self._counts()[0] - self._counted[0],
                    "eager_steps": self._counts()[1] - self._counted[1],
                }
            ),
        }

    def routes(self) -> list[Route]:
        return probe_routes("/bench/steps", self.reset, self.summary)
