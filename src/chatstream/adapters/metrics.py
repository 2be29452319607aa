"""Prometheus metrics for ``GET /metrics``, in the text exposition format 0.0.4.

A tiny, dependency-free implementation: :class:`Counter`, :class:`Gauge` and
:class:`Histogram` families, optionally labelled, collected in a :class:`Registry`.
:class:`ChatMetrics` holds the families chatstream exposes; :class:`RequestTimer` feeds it
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

import bisect
import itertools
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from chatstream.core import EngineStatistics, FinishReason, RejectReason, Usage

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

#: The ``Content-Type`` of :meth:`ChatMetrics.render`'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Queue time and time to first token (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Time between two text deltas of one request (seconds).
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Whole request, submit to terminal event (seconds).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _format_value(value: float) -> str:
    """A float as Prometheus writes it: ``+Inf``, ``-Inf``, ``NaN``, integers without ``.0``."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


# A sample before its family name: (name suffix, extra labels, value).
_Sample = tuple[str, tuple[tuple[str, str], ...], float]


class CounterChild:
    """One series of a :class:`Counter`: a total that only goes up."""

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative, not NaN).

        Raises:
            ValueError: ``amount`` is negative or NaN.
        """
        if not amount >= 0:
            raise ValueError(f"a counter only goes up, not by {amount!r}")
        self.value += amount

    def mirror(self, total: float) -> None:
        """Take the value of a total kept elsewhere (a lower value reads as a reset).

        Raises:
            ValueError: ``total`` is negative or NaN.
        """
        if not total >= 0:
            raise ValueError(f"a counter total cannot be {total!r}")
        self.value = float(total)

    def _samples(self) -> Iterator[_Sample]:
        yield "", (), self.value


class GaugeChild:
    """One series of a :class:`Gauge`: a value that goes up and down."""

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        """Set the value."""
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount``."""
        self.value -= amount

    def _samples(self) -> Iterator[_Sample]:
        yield "", (), self.value


class HistogramChild:
    """One series of a :class:`Histogram`: observation counts per bucket, sum and count."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation in the first bucket whose upper bound is ``>= value``.

        Raises:
            ValueError: ``value`` is NaN.
        """
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value
        self.count += 1

    def _samples(self) -> Iterator[_Sample]:
        for bound, cumulative in zip(self._bounds, itertools.accumulate(self._counts), strict=True):
            yield "_bucket", (("le", _format_value(bound)),), cumulative
        yield "_sum", (), self.sum
        yield "_count", (), self.count


_Child = TypeVar("_Child", CounterChild, GaugeChild, HistogramChild)


class _Metric(ABC, Generic[_Child]):
    """A metric family: a name, help text, fixed label names and one child per label set."""

    _type: ClassVar[str]
    _reserved_labels: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name: {name!r}")
        if not documentation:
            raise ValueError(f"metric {name} needs help text")
        labelnames = tuple(labelnames)
        for label in labelnames:
            if (
                not _LABEL_NAME.fullmatch(label)
                or label.startswith("__")
                or label in self._reserved_labels
            ):
                raise ValueError(f"invalid label name for {name}: {label!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names for {name}: {labelnames!r}")
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._children: dict[tuple[str, ...], _Child] = {}
        if not labelnames:
            self._children[()] = self._new_child()

    @abstractmethod
    def _new_child(self) -> _Child: ...

    def sample_names(self) -> frozenset[str]:
        """The names its sample lines use."""
        return frozenset({self.name})

    def labels(self, **values: str) -> _Child:
        """The series for these label values (every label name, exactly once), created at 0.

        Raises:
            ValueError: the names differ from the family's label names.
        """
        if set(values) != set(self.labelnames):
            raise ValueError(
                f"{self.name} takes labels {list(self.labelnames)}, got {sorted(values)}"
            )
        key = tuple(str(values[label]) for label in self.labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _only(self) -> _Child:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels: use .labels(...)")
        return self._children[()]

    def render(self) -> str:
        """The family in the text format: HELP, TYPE, then its series in creation order."""
        lines = [
            f"# HELP {self.name} {_escape_help(self.documentation)}",
            f"# TYPE {self.name} {self._type}",
        ]
        for key, child in self._children.items():
            own: list[tuple[str, str]] = list(zip(self.labelnames, key, strict=True))
            for suffix, extra, value in child._samples():
                pairs = own + list(extra)
                labels = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in pairs)
                braces = f"{{{labels}}}" if labels else ""
                lines.append(f"{self.name}{suffix}{braces} {_format_value(value)}")
        return "\n".join(lines) + "\n"


class Counter(_Metric[CounterChild]):
    """A counter family. Name totals ``*_total`` by convention."""

    _type = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        """:meth:`CounterChild.inc` on an unlabelled counter."""
        self._only().inc(amount)

    def mirror(self, total: float) -> None:
        """:meth:`CounterChild.mirror` on an unlabelled counter."""
        self._only().mirror(total)


class Gauge(_Metric[GaugeChild]):
    """A gauge family."""

    _type = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        """:meth:`GaugeChild.set` on an unlabelled gauge."""
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        """:meth:`GaugeChild.inc` on an unlabelled gauge."""
        self._only().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        """:meth:`GaugeChild.dec` on an unlabelled gauge."""
        self._only().dec(amount)


class Histogram(_Metric[HistogramChild]):
    """A histogram family with fixed buckets.

    Args:
        name: the family name; samples are ``<name>_bucket``, ``<name>_sum``, ``<name>_count``.
        documentation: the HELP text.
        labelnames: fixed label names (``le`` is reserved).
        buckets: strictly increasing upper bounds; ``+Inf`` is appended when missing.
    """

    _type = "histogram"
    _reserved_labels = frozenset({"le"})

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if any(math.isnan(b) for b in bounds) or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"buckets must increase strictly: {buckets!r}")
        if not bounds or bounds[-1] != math.inf:
            bounds += (math.inf,)
        self.buckets = bounds
        super().__init__(name, documentation, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def sample_names(self) -> frozenset[str]:
        return frozenset(self.name + suffix for suffix in ("_bucket", "_sum", "_count"))

    def observe(self, value: float) -> None:
        """:meth:`HistogramChild.observe` on an unlabelled histogram."""
        self._only().observe(value)


_M = TypeVar("_M", bound="_Metric[Any]")


class Registry:
    """Metric families rendered together, in registration order."""

    def __init__(self) -> None:
        self._metrics: list[_Metric[Any]] = []
        self._names: set[str] = set()

    def register(self, metric: _M) -> _M:
        """Add a family and return it.

        Raises:
            ValueError: its name or a sample name clashes with a registered family's.
        """
        names = metric.sample_names() | {metric.name}
        if clash := names & self._names:
            raise ValueError(f"metric names already registered: {sorted(clash)}")
        self._names |= names
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """Every family in the text format, each line ending with a newline."""
        return "".join(metric.render() for metric in self._metrics)


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
