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

Example (what a request handler does)::

    metrics = ChatMetrics(model_name="my-model")
    timer = RequestTimer(metrics)
    timer.submitted()
    handle = await service.submit_messages(...)
    try:
        async for event in handle:
            timer.observe(event)     # Admitted, TextDelta, Finished (the rest is ignored)
            ...
    finally:
        handle.close()               # the client left: the usage of its tokens so far
        timer.finished(FinishReason.CANCELLED, handle.usage)   # ignored once it finished
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

from chatstream.core import (
    Admitted,
    EngineStatistics,
    Finished,
    FinishReason,
    RejectReason,
    TextDelta,
    Usage,
)

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "INTER_TOKEN_BUCKETS",
    "LATENCY_BUCKETS",
    "TOKEN_BUCKETS",
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
#: Tokens of one request's prompt or reply (1-2-5 steps).
TOKEN_BUCKETS = tuple(float(m * 10**e) for e in range(6) for m in (1, 2, 5))


# Request outcomes, keyed by what a handler has: a FinishReason or an outcome name.
_OUTCOMES: dict[str, str] = {
    FinishReason.STOP: "finished",
    FinishReason.LENGTH: "finished",
    FinishReason.CANCELLED: "cancelled",
    FinishReason.ERROR: "error",
    "finished": "finished",
}
_OUTCOME_LABELS = ("finished", "cancelled", "error", "rejected")
# The same, as vLLM's ``finished_reason`` label says them (a plain "finished" is a stop).
_FINISHED_REASONS: dict[str, str] = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "abort",
    FinishReason.ERROR: "error",
    "finished": "stop",
    "cancelled": "abort",
    "error": "error",
}
_FINISHED_REASON_LABELS = ("stop", "length", "abort", "error")

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


#: The engine family labelled with the model's name.
_KV_USAGE = (
    "chatstream_kv_cache_usage_perc",
    "Fraction of the KV positions of all slots that running requests hold (0 to 1).",
)


def _kv_usage(stats: EngineStatistics) -> float:
    if stats.kv_tokens_capacity <= 0:
        return 0.0
    return min(1.0, stats.kv_tokens_used / stats.kv_tokens_capacity)


class _EngineCollector:
    """The engine-level families, read from the latest :class:`EngineStatistics` snapshot.

    The counters mirror totals the engine keeps (a lower value reads as a reset to Prometheus);
    before the first snapshot nothing is collected.
    """

    def __init__(self, model_name: Callable[[], str]) -> None:
        self.stats: EngineStatistics | None = None
        self._model_name = model_name

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so the registry knows their names."""
        for name, documentation, _ in _ENGINE_GAUGES:
            yield GaugeMetricFamily(name, documentation)
        for name, documentation, _ in _ENGINE_COUNTERS:
            yield CounterMetricFamily(name, documentation)
        yield GaugeMetricFamily(*_KV_USAGE, labels=("model_name",))

    def collect(self) -> Iterator[Metric]:
        """The families with their values from :attr:`stats`."""
        stats = self.stats
        if stats is None:
            return
        for name, documentation, read in _ENGINE_GAUGES:
            yield GaugeMetricFamily(name, documentation, value=read(stats))
        for name, documentation, read in _ENGINE_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=read(stats))
        kv_usage = GaugeMetricFamily(*_KV_USAGE, labels=("model_name",))
        kv_usage.add_metric([self._model_name()], _kv_usage(stats))
        yield kv_usage


class ChatMetrics:
    """The metrics chatstream exposes, all named ``chatstream_*``, on their own registry.

    Request-level families are fed by the ``observe_*`` methods (or a :class:`RequestTimer`);
    engine-level ones are taken from an :class:`EngineStatistics` snapshot in :meth:`render`.
    The families that vLLM labels with ``model_name`` (``chatstream_request_*`` and
    ``chatstream_kv_cache_usage_perc``) carry that label too.
    :attr:`registry` also holds the process, platform and GC collectors of prometheus_client;
    more families can be added to it (``Gauge(..., registry=metrics.registry)``) and are
    rendered after these.

    Args:
        model_name: the ``model_name`` label, or a function that returns it (read at each
            observation and scrape: a served name may be known only once the model runs).
    """

    def __init__(self, model_name: str | Callable[[], str] = "") -> None:
        self._model_name: Callable[[], str] = (
            model_name if callable(model_name) else lambda: model_name
        )
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
            "Completion tokens of ended requests, cancelled and failed ones included.",
            registry=registry,
        )
        self._prompt = Counter(
            "chatstream_prompt_tokens_total",
            "Prompt tokens of ended requests that got a slot, cancelled ones included.",
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
        self._add_model_families(registry)
        self._engine = _EngineCollector(self._model_name)
        registry.register(self._engine)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def _add_model_families(self, registry: CollectorRegistry) -> None:
        """The request families named and labelled as vLLM's (``model_name``)."""
        model = ("model_name",)
        self._success = Counter(
            "chatstream_request_success_total",
            "Ended requests by finished_reason: stop, length, abort (cancelled) or error.",
            (*model, "finished_reason"),
            registry=registry,
        )
        self._prompt_per_request = Histogram(
            "chatstream_request_prompt_tokens",
            "Prompt tokens of each ended request that got a slot.",
            model,
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self._generated_per_request = Histogram(
            "chatstream_request_generation_tokens",
            "Generated tokens of each ended request that got a slot.",
            model,
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self._prefill = Histogram(
            "chatstream_request_prefill_time_seconds",
            "Time from admission into a slot to the first text of the reply.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._decode = Histogram(
            "chatstream_request_decode_time_seconds",
            "Time from the first text of the reply to the end of the request.",
            model,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._inference = Histogram(
            "chatstream_request_inference_time_seconds",
            "Time from admission into a slot to the end of the request.",
            model,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._per_output_token = Histogram(
            "chatstream_request_time_per_output_token_seconds",
            "Decode time of a request divided by its generated tokens after the first.",
            model,
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        self._labelled_for: set[str] = set()

    def _model(self) -> str:
        """The model's name, its labelled series made (at 0) on first sight."""
        name = self._model_name()
        if name not in self._labelled_for:
            for reason in _FINISHED_REASON_LABELS:
                self._success.labels(model_name=name, finished_reason=reason)
            for histogram in (
                self._prompt_per_request,
                self._generated_per_request,
                self._prefill,
                self._decode,
                self._inference,
                self._per_output_token,
            ):
                histogram.labels(model_name=name)
            self._labelled_for.add(name)
        return name

    def observe_queue_time(self, seconds: float) -> None:
        """One request's time from submission to admission."""
        self._queue_time.observe(seconds)

    def observe_time_to_first_token(self, seconds: float) -> None:
        """One request's time from submission to its first text."""
        self._ttft.observe(seconds)

    def observe_inter_token(self, seconds: float) -> None:
        """The time between two consecutive text deltas of one request."""
        self._inter_token.observe(seconds)

    def observe_prefill_time(self, seconds: float) -> None:
        """One request's time from admission to its first text."""
        self._prefill.labels(model_name=self._model()).observe(seconds)

    def observe_decode_time(self, seconds: float) -> None:
        """One request's time from its first text to its end."""
        self._decode.labels(model_name=self._model()).observe(seconds)

    def observe_inference_time(self, seconds: float) -> None:
        """One request's time from admission to its end."""
        self._inference.labels(model_name=self._model()).observe(seconds)

    def observe_time_per_output_token(self, seconds: float) -> None:
        """One request's decode time per generated token after the first."""
        self._per_output_token.labels(model_name=self._model()).observe(seconds)

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
                of ``finished`` (a stop for ``finished_reason``), ``cancelled``, ``error``.
            prompt_tokens: from :class:`Usage`; 0 for a request that never got a slot
                (which then observes no per-request token histogram).
            completion_tokens: from :class:`Usage`, the tokens so far for a cancelled one.

        Raises:
            ValueError: an unknown outcome (rejected requests go to :meth:`observe_rejected`),
                or a negative token count.
        """
        name = _OUTCOMES.get(outcome)
        if name is None:
            raise ValueError(f"unknown outcome {outcome!r} (rejections: observe_rejected)")
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError(f"negative token counts: {prompt_tokens}, {completion_tokens}")
        model = self._model()
        self._duration.observe(duration)
        self._requests.labels(outcome=name).inc()
        self._success.labels(model_name=model, finished_reason=_FINISHED_REASONS[outcome]).inc()
        self._prompt.inc(prompt_tokens)
        self._generated.inc(completion_tokens)
        if prompt_tokens > 0:  # it got a slot: every prompt has a token
            self._prompt_per_request.labels(model_name=model).observe(prompt_tokens)
            self._generated_per_request.labels(model_name=model).observe(completion_tokens)

    def observe_rejected(self, reason: RejectReason | str) -> None:
        """A request refused before it ran (counted as outcome ``rejected`` too).

        Raises:
            ValueError: not a :class:`RejectReason` value.
        """
        self._rejected.labels(reason=RejectReason(reason).value).inc()
        self._requests.labels(outcome="rejected").inc()

    def render(self, stats: EngineStatistics) -> str:
        """The whole registry in the text format 0.0.4, engine families taken from ``stats``."""
        self._model()
        self._engine.stats = stats
        return generate_latest(self.registry).decode()


class RequestTimer:
    """Times one request and feeds a :class:`ChatMetrics`.

    Call :meth:`submitted` first, then :meth:`observe` with each event of the request (or
    :meth:`admitted` on ``Admitted``, :meth:`delta` on each ``TextDelta`` and
    :meth:`finished` on ``Finished``), or :meth:`rejected` when it was refused. A handler
    that stops listening calls :meth:`finished` with ``FinishReason.CANCELLED`` and the
    handle's ``usage``, so that the tokens of a cancelled request count. Only the first
    terminal call counts, so a ``finally`` block may call :meth:`finished` again safely.

    Args:
        metrics: where the observations go.
        clock: seconds from a monotonic clock.
    """

    def __init__(self, metrics: ChatMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._submitted_at: float | None = None
        self._admitted_at: float | None = None
        self._first_delta_at: float | None = None
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

    def observe(self, event: object) -> None:
        """One event of the request: ``Admitted``, ``TextDelta`` and ``Finished`` count,
        the others (``Queued``, ...) are ignored."""
        if isinstance(event, Admitted):
            self.admitted()
        elif isinstance(event, TextDelta):
            self.delta()
        elif isinstance(event, Finished):
            self.finished(event.reason, event.usage)

    def admitted(self) -> None:
        """The request got a slot: observe its queue time."""
        now, elapsed = self._since_submitted()
        self._admitted_at = now
        self._metrics.observe_queue_time(elapsed)

    def delta(self) -> None:
        """Text arrived: the first observes time to first token, later ones inter-token time."""
        now, elapsed = self._since_submitted()
        if self._last_delta_at is None:
            self._first_delta_at = now
            self._metrics.observe_time_to_first_token(elapsed)
        else:
            self._metrics.observe_inter_token(now - self._last_delta_at)
        self._last_delta_at = now

    def finished(self, outcome: FinishReason | str, usage: Usage | None = None) -> None:
        """The request ended: observe its duration, outcome and tokens (once).

        Args:
            outcome: as :meth:`ChatMetrics.observe_request` takes it.
            usage: its token counts (a cancelled request's so far); None counts none.
        """
        if self._done:
            return
        now, elapsed = self._since_submitted()
        if usage is None:
            usage = Usage(prompt_tokens=0, completion_tokens=0)
        ran = self._admitted_at is not None or _FINISHED_REASONS.get(outcome) in ("stop", "length")
        self._metrics.observe_request(
            elapsed, outcome, usage.prompt_tokens if ran else 0, usage.completion_tokens
        )
        self._done = True
        self._observe_phases(now, usage.completion_tokens)

    def _observe_phases(self, now: float, completion_tokens: int) -> None:
        admitted, first = self._admitted_at, self._first_delta_at
        if admitted is not None:
            self._metrics.observe_inference_time(now - admitted)
            if first is not None:
                self._metrics.observe_prefill_time(first - admitted)
        if first is None:
            return
        decode = now - first
        self._metrics.observe_decode_time(decode)
        if completion_tokens > 1:
            self._metrics.observe_time_per_output_token(decode / (completion_tokens - 1))

    def timings(self, completion_tokens: int) -> dict[str, float | None]:
        """What a client may show of this request so far: milliseconds in the queue and to
        the first text, and the tokens per second after it (None where not known yet)."""
        submitted, admitted = self._submitted_at, self._admitted_at
        first, last = self._first_delta_at, self._last_delta_at
        rate = None
        if first is not None and last is not None and last > first and completion_tokens > 1:
            rate = round((completion_tokens - 1) / (last - first), 1)

        def ms(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else round((end - start) * 1000, 1)

        return {
            "queue_ms": ms(submitted, admitted),
            "ttft_ms": ms(submitted, first),
            "tokens_per_s": rate,
        }

    def rejected(self, reason: RejectReason | str) -> None:
        """The request was refused before it ran (once)."""
        if self._done:
            return
        self._done = True
        self._metrics.observe_rejected(reason)
