"""Prometheus metrics for ``GET /metrics``, built on :mod:`prometheus_client`.

:class:`ChatMetrics` holds the families chatstream exposes, on a
:class:`~prometheus_client.CollectorRegistry` of its own (never the library's global
``REGISTRY``), so two ``ChatStream`` instances in one process count separately. That registry
also carries the library's ``ProcessCollector`` (``process_*``, on Linux), ``PlatformCollector``
(``python_info``) and ``GCCollector`` (``python_gc_*``), like any Python exporter.
Request-level families are prometheus_client histograms and counters fed by the ``observe_*``
methods; engine-level families come from a small collector that reads the latest
:class:`EngineStatistics` snapshot given to :meth:`ChatMetrics.render`. :class:`RequestTimer`
feeds the request-level families from one HTTP request's events. The updates happen on the
event loop (and prometheus_client is thread-safe anyway).

:meth:`ChatMetrics.render` writes the classic text format 0.0.4 (``CONTENT_TYPE``, what the
library's own exporters serve to a scraper that asks for nothing else). Counters and histograms
made by prometheus_client also expose their ``*_created`` series, as the library does by
default.

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
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from chatstream.core import EngineStatistics, FinishReason, RejectReason, Usage

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "INTER_TOKEN_BUCKETS",
    "LATENCY_BUCKETS",
    "ChatMetrics",
    "RequestTimer",
]

#: The ``Content-Type`` of :meth:`ChatMetrics.render`: Prometheus' text format 0.0.4.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Queue time and time to first token (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
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
_OUTCOME_LABELS = ("finished", "cancelled", "error", "rejected")

# The engine-level families: (name, help, how to read it from a snapshot), in render order.
_ENGINE_GAUGES: tuple[tuple[str, str, Callable[[EngineStatistics], float]], ...] = (
    ("chatstream_requests_running", "Requests holding a slot.", lambda s: s.running),
    ("chatstream_requests_waiting", "Requests waiting for a slot.", lambda s: s.waiting),
    ("chatstream_slots", "Slots: requests that can run at once.", lambda s: s.capacity),
    ("chatstream_queue_capacity", "Requests that can wait for a slot.", lambda s: s.max_waiting),
    ("chatstream_draining", "1 while draining for shutdown, else 0.", lambda s: int(s.draining)),
    (
        "chatstream_model_available",
        "1 while the model can generate, else 0.",
        lambda s: int(s.lost is None),
    ),
    (
        "chatstream_prefix_cache_parked_tokens",
        "Tokens whose KV slots keep after their request left, ready for reuse.",
        lambda s: s.prefix.parked_tokens if s.prefix else 0,
    ),
    (
        "chatstream_prefix_cache_parked_bytes",
        "Bytes of KV that slots keep after their request left.",
        lambda s: s.prefix.parked_bytes if s.prefix else 0,
    ),
    (
        "chatstream_prefix_cache_stored_tokens",
        "Tokens whose KV host memory keeps for conversations no slot holds.",
        lambda s: s.prefix.stored_tokens if s.prefix else 0,
    ),
    (
        "chatstream_prefix_cache_stored_bytes",
        "Bytes of KV that host memory keeps (never above --prefix-cache-mb).",
        lambda s: s.prefix.stored_bytes if s.prefix else 0,
    ),
)
_ENGINE_COUNTERS: tuple[tuple[str, str, Callable[[EngineStatistics], float]], ...] = (
    ("chatstream_steps_total", "Model steps planned by the engine.", lambda s: s.steps_total),
    (
        "chatstream_engine_cancelled_total",
        "Requests cancelled in the engine.",
        lambda s: s.cancelled_total,
    ),
    (
        "chatstream_engine_rejected_total",
        "Requests rejected by the engine.",
        lambda s: s.rejected_total,
    ),
    (
        "chatstream_engine_failed_total",
        "Requests that ended in an error of the model.",
        lambda s: s.failed_total,
    ),
    (
        "chatstream_prefix_cache_queried_tokens_total",
        "Prompt tokens looked up in the prefix cache (every admitted request's prompt).",
        lambda s: s.prefix.queried_tokens if s.prefix else 0,
    ),
    (
        "chatstream_prefix_cache_hit_tokens_total",
        "Prompt tokens whose KV was reused instead of prefilled.",
        lambda s: s.prefix.hit_tokens if s.prefix else 0,
    ),
    (
        "chatstream_prefix_cache_restored_tokens_total",
        "Of the hit tokens, those copied back from host memory.",
        lambda s: s.prefix.restored_tokens if s.prefix else 0,
    ),
)


class _EngineCollector:
    """The engine-level families, read from the latest :class:`EngineStatistics` snapshot.

    The counters mirror totals the engine keeps (a lower value reads as a reset to Prometheus);
    before the first snapshot nothing is collected.
    """

    def __init__(self) -> None:
        self.stats: EngineStatistics | None = None

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so the registry knows their names."""
        for name, documentation, _ in _ENGINE_GAUGES:
            yield GaugeMetricFamily(name, documentation)
        for name, documentation, _ in _ENGINE_COUNTERS:
            yield CounterMetricFamily(name, documentation)

    def collect(self) -> Iterator[Metric]:
        """The families with their values from :attr:`stats`."""
        stats = self.stats
        if stats is None:
            return
        for name, documentation, read in _ENGINE_GAUGES:
            yield GaugeMetricFamily(name, documentation, value=read(stats))
        for name, documentation, read in _ENGINE_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=read(stats))


class ChatMetrics:
    """The metrics chatstream exposes, all named ``chatstream_*``, on their own registry.

    Request-level families are fed by the ``observe_*`` methods (or a :class:`RequestTimer`);
    engine-level ones are taken from an :class:`EngineStatistics` snapshot in :meth:`render`.
    :attr:`registry` also holds the process, platform and GC collectors of prometheus_client;
    more families can be added to it (``Gauge(..., registry=metrics.registry)``) and are
    rendered after these.
    """

    def __init__(self) -> None:
        #: This instance's own registry: what :meth:`render` writes.
        self.registry = registry = CollectorRegistry()
        self._queue_time = Histogram(
            "chatstream_queue_time_seconds",
            "Time from submission to admission into a slot.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._ttft = Histogram(
            "chatstream_time_to_first_token_seconds",
            "Time from submission to the first text of the reply.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._inter_token = Histogram(
            "chatstream_inter_token_latency_seconds",
            "Time between consecutive text deltas of one request.",
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        self._duration = Histogram(
            "chatstream_request_duration_seconds",
            "Time from submission to the end of a request that was not rejected.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._generated = Counter(
            "chatstream_generated_tokens_total",
            "Completion tokens of finished requests.",
            registry=registry,
        )
        self._prompt = Counter(
            "chatstream_prompt_tokens_total",
            "Prompt tokens of finished requests.",
            registry=registry,
        )
        self._requests = Counter(
            "chatstream_requests_total", "Requests by outcome.", ("outcome",), registry=registry
        )
        for outcome in _OUTCOME_LABELS:
            self._requests.labels(outcome=outcome)
        self._rejected = Counter(
            "chatstream_rejected_requests_total",
            "Rejected requests by reason.",
            ("reason",),
            registry=registry,
        )
        for reason in RejectReason:
            self._rejected.labels(reason=reason.value)
        self._engine = _EngineCollector()
        registry.register(self._engine)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

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
            ValueError: an unknown outcome (rejected requests go to :meth:`observe_rejected`),
                or a negative token count.
        """
        name = _OUTCOMES.get(outcome)
        if name is None:
            raise ValueError(f"unknown outcome {outcome!r} (rejections: observe_rejected)")
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError(f"negative token counts: {prompt_tokens}, {completion_tokens}")
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
        """The whole registry in the text format 0.0.4, engine families taken from ``stats``."""
        self._engine.stats = stats
        return generate_latest(self.registry).decode()


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
