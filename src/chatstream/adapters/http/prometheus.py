"""A tiny, dependency-free Prometheus client: the text exposition format 0.0.4.

:class:`Counter`, :class:`Gauge` and :class:`Histogram` families, optionally labelled,
collected in a :class:`Registry` that renders them all. Nothing here is thread-safe: every
update happens on the event loop. :mod:`.metrics` builds chatstream's own families on it.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "Registry",
]

#: The ``Content-Type`` of a rendered registry.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: A histogram's buckets when none are given: latencies in seconds, 5 ms to a minute.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

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
        buckets: Sequence[float] = DEFAULT_BUCKETS,
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
