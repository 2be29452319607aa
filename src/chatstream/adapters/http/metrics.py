"""Prometheus metrics for ``GET /metrics``, in the text exposition format 0.0.4.

Built on the small Prometheus client of :mod:`.prometheus` (whose names this module also
exports). :class:`ChatMetrics` holds the families chatstream exposes; :class:`RequestTimer` feeds it
from one HTTP request's events. Nothing here is thread-safe: every update happens on the
event loop.

Example::

    metrics = ChatMetrics()
    timer = RequestTimer(metrics)
    timer.submitted()
    ...                          # on Admitted: timer.admitted(); on TextDelta: timer.delta()
    timer.finished(event.reason, event.usage)
    body = metrics.render(engine.statistics())   # served with CONTENT_TYPE
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chatstream.core import EngineStatistics, FinishReason, RejectReason, Usage

from .prometheus import (
    CONTENT_TYPE,
    DEFAULT_BUCKETS,
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
    Registry,
)

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "INTER_TOKEN_BUCKETS",
    "LATENCY_BUCKETS",
    "ChatMetrics",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "Registry",
    "RequestTimer",
]

#: Queue time and time to first token (seconds).
LATENCY_BUCKETS = DEFAULT_BUCKETS
#: Time between two text deltas of one request (seconds).
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Whole request, submit to terminal event (seconds).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


# Request outcomes, keyed by what a handler has: a FinishReason or an outcome name.
_OUTCOMES: dict[str, str] = {
    FinishReason.STOP: "finished",
    FinishReason.LENGTH: "finished",
    FinishReason.CANCELLED: "cancelled",
    FinishReason.ERROR: "error",
    "finished": "finished",
}


class ChatMetrics:
    """The metrics chatstream exposes, all named ``chatstream_*``.

    Request-level families are fed by the ``observe_*`` methods (or a :class:`RequestTimer`);
    engine-level ones are taken from an :class:`EngineStatistics` snapshot in :meth:`render`.
    More families can be added to :attr:`registry`; they are rendered after these.
    """

    def __init__(self) -> None:
        self.registry = registry = Registry()
        self._queue_time = registry.register(
            Histogram(
                "chatstream_queue_time_seconds",
                "Time from submission to admission into a slot.",
                buckets=LATENCY_BUCKETS,
            )
        )
        self._ttft = registry.register(
            Histogram(
                "chatstream_time_to_first_token_seconds",
                "Time from submission to the first text of the reply.",
                buckets=LATENCY_BUCKETS,
            )
        )
        self._inter_token = registry.register(
            Histogram(
                "chatstream_inter_token_latency_seconds",
                "Time between consecutive text deltas of one request.",
                buckets=INTER_TOKEN_BUCKETS,
            )
        )
        self._duration = registry.register(
            Histogram(
                "chatstream_request_duration_seconds",
                "Time from submission to the end of a request that was not rejected.",
                buckets=DURATION_BUCKETS,
            )
        )
        self._generated = registry.register(
            Counter("chatstream_generated_tokens_total", "Completion tokens of finished requests.")
        )
        self._prompt = registry.register(
            Counter("chatstream_prompt_tokens_total", "Prompt tokens of finished requests.")
        )
        self._requests = registry.register(
            Counter("chatstream_requests_total", "Requests by outcome.", ("outcome",))
        )
        for outcome in ("finished", "cancelled", "error", "rejected"):
            self._requests.labels(outcome=outcome)
        self._rejected = registry.register(
            Counter(
                "chatstream_rejected_requests_total", "Rejected requests by reason.", ("reason",)
            )
        )
        for reason in RejectReason:
            self._rejected.labels(reason=reason.value)
        self._running = registry.register(
            Gauge("chatstream_requests_running", "Requests holding a slot.")
        )
        self._waiting = registry.register(
            Gauge("chatstream_requests_waiting", "Requests waiting for a slot.")
        )
        self._slots = registry.register(
            Gauge("chatstream_slots", "Slots: requests that can run at once.")
        )
        self._queue_capacity = registry.register(
            Gauge("chatstream_queue_capacity", "Requests that can wait for a slot.")
        )
        self._draining = registry.register(
            Gauge("chatstream_draining", "1 while draining for shutdown, else 0.")
        )
        self._available = registry.register(
            Gauge("chatstream_model_available", "1 while the model can generate, else 0.")
        )
        self._steps = registry.register(
            Counter("chatstream_steps_total", "Model steps planned by the engine.")
        )
        self._engine_cancelled = registry.register(
            Counter("chatstream_engine_cancelled_total", "Requests cancelled in the engine.")
        )
        self._engine_rejected = registry.register(
            Counter("chatstream_engine_rejected_total", "Requests rejected by the engine.")
        )

    def observe_queue_time(self, seconds: float) -> None:
        """One request's time from submission to admission."""
        self._queue_time.observe(seconds)

    def observe_time_to_first_token(self, seconds: float) -> None:
        """One request's time from submission to its first text."""
        self._ttft.observe(seconds)

    def observe_inter_token(self, seconds: float) -> None:
        """The time between two consecutive text deltas of one request."""
        self._inter_token.observe(seconds)

    def observe_request(
        self,
        duration: float,
        outcome: FinishReason | str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """A request that ran (or waited) and ended.

        Args:
            duration: seconds from submission to the terminal event.
            outcome: a :class:`FinishReason` (stop and length count as ``finished``) or one
                of ``finished``, ``cancelled``, ``error``.
            prompt_tokens: from :class:`Usage`.
            completion_tokens: from :class:`Usage`.

        Raises:
            ValueError: an unknown outcome; rejected requests go to :meth:`observe_rejected`.
        """
        name = _OUTCOMES.get(outcome)
        if name is None:
            raise ValueError(f"unknown outcome {outcome!r} (rejections: observe_rejected)")
        self._duration.observe(duration)
        self._requests.labels(outcome=name).inc()
        self._prompt.inc(prompt_tokens)
        self._generated.inc(completion_tokens)

    def observe_rejected(self, reason: RejectReason | str) -> None:
        """A request refused before it ran (counted as outcome ``rejected`` too).

        Raises:
            ValueError: not a :class:`RejectReason` value.
        """
        self._rejected.labels(reason=RejectReason(reason).value).inc()
        self._requests.labels(outcome="rejected").inc()

    def render(self, stats: EngineStatistics) -> str:
        """The whole exposition text, engine families taken from ``stats``."""
        self._running.set(stats.running)
        self._waiting.set(stats.waiting)
        self._slots.set(stats.capacity)
        self._queue_capacity.set(stats.max_waiting)
        self._draining.set(int(stats.draining))
        self._available.set(int(stats.lost is None))
        self._steps.mirror(stats.steps_total)
        self._engine_cancelled.mirror(stats.cancelled_total)
        self._engine_rejected.mirror(stats.rejected_total)
        return self.registry.render()


class RequestTimer:
    """Times one request and feeds a :class:`ChatMetrics`.

    Call :meth:`submitted` first, then :meth:`admitted` on ``Admitted``, :meth:`delta` on
    each ``TextDelta``, and :meth:`finished` (or :meth:`rejected`) on the terminal event.
    Only the first terminal call counts, so a ``finally`` block may call :meth:`finished`
    again safely.

    Args:
        metrics: where the observations go.
        clock: seconds from a monotonic clock.
    """

    def __init__(self, metrics: ChatMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._submitted_at: float | None = None
        self._last_delta_at: float | None = None
        self._done = False

    def _since_submitted(self) -> tuple[float, float]:
        if self._submitted_at is None:
            raise RuntimeError("RequestTimer.submitted() was not called")
        now = self._clock()
        return now, now - self._submitted_at

    def submitted(self) -> None:
        """The request was submitted to the engine: start timing."""
        self._submitted_at = self._clock()

    def admitted(self) -> None:
        """The request got a slot: observe its queue time."""
        self._metrics.observe_queue_time(self._since_submitted()[1])

    def delta(self) -> None:
        """Text arrived: the first observes time to first token, later ones inter-token time."""
        now, elapsed = self._since_submitted()
        if self._last_delta_at is None:
            self._metrics.observe_time_to_first_token(elapsed)
        else:
            self._metrics.observe_inter_token(now - self._last_delta_at)
        self._last_delta_at = now

    def finished(self, outcome: FinishReason | str, usage: Usage | None = None) -> None:
        """The request ended: observe its duration, outcome and tokens (once)."""
        if self._done:
            return
        elapsed = self._since_submitted()[1]
        if usage is None:
            usage = Usage(prompt_tokens=0, completion_tokens=0)
        self._metrics.observe_request(
            elapsed, outcome, usage.prompt_tokens, usage.completion_tokens
        )
        self._done = True

    def rejected(self, reason: RejectReason | str) -> None:
        """The request was refused before it ran (once)."""
        if self._done:
            return
        self._done = True
        self._metrics.observe_rejected(reason)
