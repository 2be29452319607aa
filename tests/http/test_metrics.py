"""Prometheus text exposition: primitives, escaping, ChatMetrics, and a strict parser check."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pytest

from chatstream.adapters.http.metrics import (
    CONTENT_TYPE,
    DURATION_BUCKETS,
    INTER_TOKEN_BUCKETS,
    LATENCY_BUCKETS,
    ChatMetrics,
    Counter,
    Gauge,
    Histogram,
    Registry,
    RequestTimer,
)
from chatstream.core import EngineStatistics, FinishReason, RejectReason, Usage

# ---------------------------------------------------------------------------- strict parser

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_VALUE = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]Inf|NaN"
_LABEL_NC = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_LABELS = rf"{_LABEL_NC}(?:,{_LABEL_NC})*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{({_LABELS})\}})? ({_VALUE})")
_HELP = re.compile(rf"# HELP ({_NAME}) ((?:[^\\\n]|\\[\\n])*)")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram)")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Labels = tuple[tuple[str, str], ...]


class ExpositionError(Exception):
    pass


@dataclass
class Family:
    name: str
    type: str | None = None
    help: str | None = None
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)


def _unescape(text: str, quote: bool) -> str:
    table = {"\\\\": "\\", "\\n": "\n"} | ({'\\"': '"'} if quote else {})
    return re.sub(r"\\.", lambda m: table[m.group()], text)


def _float(text: str) -> float:
    return float(text.replace("Inf", "inf"))


def parse(text: str) -> dict[str, Family]:
    """Parse exposition text strictly; raise ExpositionError on anything off-grammar.

    Every sample must belong to the family of the latest ``# TYPE`` line (so families are
    declared before use and contiguous); HELP and TYPE appear at most once per family.
    """
    if not text.endswith("\n"):
        raise ExpositionError("text must end with a newline")
    families: dict[str, Family] = {}
    current: Family | None = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        if m := _HELP.fullmatch(line):
            family = families.setdefault(m[1], Family(m[1]))
            if family.help is not None or family.samples:
                raise ExpositionError(f"line {number}: HELP repeated or late")
            family.help = _unescape(m[2], quote=False)
        elif m := _TYPE.fullmatch(line):
            family = families.setdefault(m[1], Family(m[1]))
            if family.type is not None or family.samples:
                raise ExpositionError(f"line {number}: TYPE repeated or late")
            family.type = m[2]
            current = family
        elif m := _SAMPLE.fullmatch(line):
            name, labels_text, value_text = m[1], m[2], m[3]
            pairs = tuple(re.findall(_LABEL, labels_text)) if labels_text else ()
            labels = tuple((k, _unescape(v, quote=True)) for k, v in pairs)
            if len({k for k, _ in labels}) != len(labels):
                raise ExpositionError(f"line {number}: duplicate label name")
            if current is None or not _belongs(name, current):
                raise ExpositionError(f"line {number}: {name} outside its family's TYPE")
            key = (name, labels)
            if key in current.samples:
                raise ExpositionError(f"line {number}: duplicate series")
            current.samples[key] = _float(value_text)
        else:
            raise ExpositionError(f"line {number}: not in the grammar: {line!r}")
    for family in families.values():
        _check_family(family)
    return families


def _belongs(sample_name: str, family: Family) -> bool:
    if family.type == "histogram":
        return sample_name in {family.name + s for s in _HISTOGRAM_SUFFIXES}
    return sample_name == family.name


def _check_family(family: Family) -> None:
    if family.type == "counter":
        if any(not v >= 0 for v in family.samples.values()):
            raise ExpositionError(f"{family.name}: negative or NaN counter")
    elif family.type == "histogram":
        _check_histogram(family)


def _check_histogram(family: Family) -> None:
    buckets: dict[Labels, list[tuple[float, float]]] = {}
    for (name, labels), value in family.samples.items():
        if name == family.name + "_bucket":
            le = [v for k, v in labels if k == "le"]
            if len(le) != 1:
                raise ExpositionError(f"{family.name}: bucket without le")
            rest = tuple(p for p in labels if p[0] != "le")
            buckets.setdefault(rest, []).append((_float(le[0]), value))
    for rest, series in buckets.items():
        bounds = [b for b, _ in series]
        counts = [c for _, c in series]
        if bounds != sorted(set(bounds)) or bounds[-1] != math.inf:
            raise ExpositionError(f"{family.name}{rest}: le not increasing to +Inf")
        if counts != sorted(counts):
            raise ExpositionError(f"{family.name}{rest}: buckets not cumulative")
        if family.samples.get((family.name + "_count", rest)) != counts[-1]:
            raise ExpositionError(f"{family.name}{rest}: +Inf bucket differs from _count")
        if (family.name + "_sum", rest) not in family.samples:
            raise ExpositionError(f"{family.name}{rest}: no _sum")


def value(families: dict[str, Family], family: str, sample: str, **labels: str) -> float:
    return families[family].samples[(sample, tuple(labels.items()))]


@pytest.mark.parametrize(
    "text",
    [
        "# TYPE a counter\na 1",  # no final newline
        "a 1\n",  # no TYPE
        "# TYPE a counter\nb 1\n",  # another family
        "# TYPE a counter\n# TYPE a counter\n",
        "# TYPE a counter\na 1\n# HELP a late\n",
        "# HELP a x\n# HELP a x\n",
        "# TYPE a counter\na 1\n# TYPE b gauge\na 2\n",  # not contiguous
        "# TYPE a counter\na 1\na 2\n",
        "# TYPE a counter\na -1\n",
        "# TYPE a counter\na 1.0.0\n",
        "# TYPE a counter\na inf\n",
        "# TYPE a counter\na 1_0\n",
        '# TYPE a counter\na{x="1",x="2"} 1\n',
        '# TYPE a counter\na{x="1""} 1\n',
        '# TYPE a counter\na{x="\\t"} 1\n',
        "# TYPE a counter\na{} 1\n",
        "# TYPE a counter\n\n",
        "# HELP a bad \\t\n",
        "# TYPE a summary\n",
        "# TYPE h histogram\nh_bucket 1\n",
        '# TYPE h histogram\nh_bucket{le="1"} 1\nh_count 1\nh_sum 1\n',  # no +Inf
        '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_bucket{le="1"} 1\nh_count 2\nh_sum 1\n',
        '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_count 1\nh_sum 1\n',
        '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_count 1\nh_sum 1\n',
        '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_count 1\n',
    ],
)
def test_parser_rejects(text: str) -> None:
    with pytest.raises(ExpositionError):
        parse(text)


def test_parser_accepts_and_unescapes() -> None:
    text = (
        "# HELP h a \\\\ b\\nc\n"
        "# TYPE h histogram\n"
        'h_bucket{k="q\\"\\\\\\n",le="0.5"} 1\n'
        'h_bucket{k="q\\"\\\\\\n",le="+Inf"} 2\n'
        'h_sum{k="q\\"\\\\\\n"} 1e-05\n'
        'h_count{k="q\\"\\\\\\n"} 2\n'
        "# TYPE g gauge\n"
        "g NaN\n"
    )
    families = parse(text)
    assert families["h"].help == "a \\ b\nc"
    assert value(families, "h", "h_sum", k='q"\\\n') == 1e-05
    assert math.isnan(value(families, "g", "g"))


# ---------------------------------------------------------------------------- primitives


def test_counter_without_labels() -> None:
    counter = Counter("jobs_total", "Jobs done.")
    counter.inc()
    counter.inc(2.5)
    counter.inc(0)
    assert (
        counter.render()
        == "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total 3.5\n"
    )
    counter.mirror(7)
    assert counter.render().endswith("\njobs_total 7\n")


def test_counter_with_labels_in_creation_order() -> None:
    counter = Counter("http_requests_total", "Requests.", ("method", "code"))
    assert (
        counter.render()
        == "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n"
    )
    counter.labels(code="200", method="post").inc(3)
    counter.labels(method="get", code="404").inc()
    counter.labels(method="post", code="200").inc()
    counter.labels(method="get", code="500").mirror(2)
    assert counter.render() == (
        "# HELP http_requests_total Requests.\n"
        "# TYPE http_requests_total counter\n"
        'http_requests_total{method="post",code="200"} 4\n'
        'http_requests_total{method="get",code="404"} 1\n'
        'http_requests_total{method="get",code="500"} 2\n'
    )


def test_gauge_values() -> None:
    gauge = Gauge("temperature", "Degrees.")
    gauge.set(3)
    gauge.inc()
    gauge.dec(5.5)
    assert (
        gauge.render()
        == "# HELP temperature Degrees.\n# TYPE temperature gauge\ntemperature -1.5\n"
    )
    labelled = Gauge("g", "G.", ["k"])
    for k, v in [("a", math.inf), ("b", -math.inf), ("c", math.nan), ("d", 1e-05),
                 ("e", 0.1), ("f", 2.0**53), ("g", -0.0), ("h", 12)]:  # fmt: skip
        labelled.labels(k=k).set(v)
    labelled.labels(k="h").inc(0.5)
    labelled.labels(k="h").dec()
    assert labelled.render().split("\n")[2:] == [
        'g{k="a"} +Inf',
        'g{k="b"} -Inf',
        'g{k="c"} NaN',
        'g{k="d"} 1e-05',
        'g{k="e"} 0.1',
        'g{k="f"} 9007199254740992.0',
        'g{k="g"} 0',
        'g{k="h"} 11.5',
        "",
    ]


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram("latency_seconds", "Latency.", buckets=[0.25, 1, 2.5])
    assert histogram.buckets == (0.25, 1.0, 2.5, math.inf)
    for observation in (0.1, 1.0, 1.0, 3, 100):
        histogram.observe(observation)
    assert histogram.render() == (
        "# HELP latency_seconds Latency.\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{le="0.25"} 1\n'
        'latency_seconds_bucket{le="1"} 3\n'  # le is inclusive
        'latency_seconds_bucket{le="2.5"} 3\n'
        'latency_seconds_bucket{le="+Inf"} 5\n'
        "latency_seconds_sum 105.1\n"
        "latency_seconds_count 5\n"
    )
    parse(histogram.render())


def test_labelled_histogram_and_inf_bucket_given() -> None:
    histogram = Histogram("h", "H.", ("route",), buckets=(1, math.inf))
    histogram.labels(route="/a").observe(math.inf)
    histogram.labels(route="/b").observe(-math.inf)
    assert histogram.render() == (
        "# HELP h H.\n"
        "# TYPE h histogram\n"
        'h_bucket{route="/a",le="1"} 0\n'
        'h_bucket{route="/a",le="+Inf"} 1\n'
        'h_sum{route="/a"} +Inf\n'
        'h_count{route="/a"} 1\n'
        'h_bucket{route="/b",le="1"} 1\n'
        'h_bucket{route="/b",le="+Inf"} 1\n'
        'h_sum{route="/b"} -Inf\n'
        'h_count{route="/b"} 1\n'
    )


def test_histogram_without_buckets_has_only_inf() -> None:
    histogram = Histogram("h", "H.", buckets=())
    histogram.observe(2)
    assert histogram.render().split("\n")[2:] == [
        'h_bucket{le="+Inf"} 1',
        "h_sum 2",
        "h_count 1",
        "",
    ]


def test_escaping() -> None:
    counter = Counter("c", 'Help with \\ backslash,\nnewline and "quotes".', ("path",))
    counter.labels(path='C:\\dir "x"\nnext').inc()
    assert counter.render() == (
        '# HELP c Help with \\\\ backslash,\\nnewline and "quotes".\n'
        "# TYPE c counter\n"
        'c{path="C:\\\\dir \\"x\\"\\nnext"} 1\n'
    )
    families = parse(counter.render())
    assert families["c"].help == 'Help with \\ backslash,\nnewline and "quotes".'
    assert value(families, "c", "c", path='C:\\dir "x"\nnext') == 1


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "a\n", "é", "a{b}"])
def test_invalid_metric_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter(name, "Help.")


def test_valid_metric_names() -> None:
    for name in ("a", "_a", ":a", "a:b_c9", "A"):
        assert Gauge(name, "Help.").name == name


@pytest.mark.parametrize("label", ["", "1a", "a-b", "__reserved", "a:b", "a\n"])
def test_invalid_label_names(label: str) -> None:
    with pytest.raises(ValueError, match="invalid label name"):
        Counter("c", "Help.", (label,))


def test_other_invalid_definitions() -> None:
    with pytest.raises(ValueError, match="invalid label name"):
        Histogram("h", "Help.", ("le",))
    assert Counter("c", "Help.", ("le",)).labelnames == ("le",)
    with pytest.raises(ValueError, match="duplicate label names"):
        Counter("c", "Help.", ("a", "a"))
    with pytest.raises(ValueError, match="needs help text"):
        Gauge("g", "")
    with pytest.raises(ValueError, match="increase strictly"):
        Histogram("h", "Help.", buckets=(1, 1))
    with pytest.raises(ValueError, match="increase strictly"):
        Histogram("h", "Help.", buckets=(2, 1))
    with pytest.raises(ValueError, match="increase strictly"):
        Histogram("h", "Help.", buckets=(math.nan,))


def test_invalid_updates() -> None:
    counter = Counter("c", "Help.")
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="only goes up"):
            counter.inc(bad)
        with pytest.raises(ValueError, match="cannot be"):
            counter.mirror(bad)
    with pytest.raises(ValueError, match="cannot observe NaN"):
        Histogram("h", "Help.").observe(math.nan)
    labelled = Counter("l", "Help.", ("a", "b"))
    with pytest.raises(ValueError, match="has labels"):
        labelled.inc()
    with pytest.raises(ValueError, match="takes labels"):
        labelled.labels(a="1")
    with pytest.raises(ValueError, match="takes labels"):
        labelled.labels(a="1", b="2", c="3")
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels(a="1")
    assert counter.labels() is counter.labels()  # the unlabelled series
    with pytest.raises(ValueError, match="has labels"):
        Gauge("g", "Help.", ("a",)).set(1)
    with pytest.raises(ValueError, match="has labels"):
        Histogram("h", "Help.", ("a",)).observe(1)


def test_registry_renders_in_order_and_rejects_clashes() -> None:
    registry = Registry()
    assert registry.render() == ""
    gauge = registry.register(Gauge("b", "B."))
    histogram = registry.register(Histogram("a", "A.", buckets=(1,)))
    assert gauge.sample_names() == {"b"}
    assert histogram.sample_names() == {"a_bucket", "a_sum", "a_count"}
    gauge.set(2)
    assert registry.render() == gauge.render() + histogram.render()
    for clash in (Counter("b", "x"), Counter("a_count", "x"), Histogram("b", "x"), Gauge("a", "x")):
        with pytest.raises(ValueError, match="already registered"):
            registry.register(clash)
    registry.register(Counter("b_sum", "Not a histogram's sample here."))
    parse(registry.render())


# ---------------------------------------------------------------------------- ChatMetrics

FAMILIES = {
    "chatstream_queue_time_seconds": "histogram",
    "chatstream_time_to_first_token_seconds": "histogram",
    "chatstream_inter_token_latency_seconds": "histogram",
    "chatstream_request_duration_seconds": "histogram",
    "chatstream_generated_tokens_total": "counter",
    "chatstream_prompt_tokens_total": "counter",
    "chatstream_requests_total": "counter",
    "chatstream_rejected_requests_total": "counter",
    "chatstream_requests_running": "gauge",
    "chatstream_requests_waiting": "gauge",
    "chatstream_slots": "gauge",
    "chatstream_queue_capacity": "gauge",
    "chatstream_draining": "gauge",
    "chatstream_model_available": "gauge",
    "chatstream_steps_total": "counter",
    "chatstream_engine_cancelled_total": "counter",
    "chatstream_engine_rejected_total": "counter",
}


def _stats(
    *,
    running: int = 0,
    waiting: int = 0,
    rejected_total: int = 0,
    cancelled_total: int = 0,
    steps_total: int = 0,
    draining: bool = False,
    lost: str | None = None,
) -> EngineStatistics:
    return EngineStatistics(
        running=running,
        waiting=waiting,
        capacity=4,
        max_waiting=8,
        admitted_total=3,
        rejected_total=rejected_total,
        cancelled_total=cancelled_total,
        finished_total=3,
        generated_tokens_total=5,
        steps_total=steps_total,
        step_in_flight=True,
        draining=draining,
        lost=lost,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_content_type_and_buckets() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    for buckets in (LATENCY_BUCKETS, INTER_TOKEN_BUCKETS, DURATION_BUCKETS):
        assert list(buckets) == sorted(set(buckets))


def test_render_declares_every_family_once() -> None:
    text = ChatMetrics().render(_stats())
    assert text.endswith("\n")
    for name, kind in FAMILIES.items():
        assert text.count(f"# HELP {name} ") == 1
        assert text.count(f"# TYPE {name} {kind}\n") == 1
    families = parse(text)
    assert {name: f.type for name, f in families.items()} == FAMILIES
    assert all(f.help for f in families.values())
    # Every labelled series exists from the start, at 0.
    for outcome in ("finished", "cancelled", "error", "rejected"):
        assert value(families, "chatstream_requests_total", "chatstream_requests_total",
                     outcome=outcome) == 0  # fmt: skip
    for reason in RejectReason:
        name = "chatstream_rejected_requests_total"
        assert value(families, name, name, reason=reason.value) == 0
    assert value(families, "chatstream_model_available", "chatstream_model_available") == 1


def _bucket(families: dict[str, Family], name: str, le: str) -> float:
    return value(families, name, name + "_bucket", le=le)


def test_scripted_requests() -> None:
    metrics = ChatMetrics()
    clock = FakeClock()

    # A: queued 1/64 s, three deltas, stops after 1 s. Times are binary fractions: exact sums.
    a = RequestTimer(metrics, clock)
    a.submitted()
    clock.now = 0.015625
    a.admitted()
    for clock.now in (0.5, 0.53125, 0.59375):
        a.delta()
    clock.now = 1.0
    a.finished(FinishReason.STOP, Usage(prompt_tokens=7, completion_tokens=3))

    # B: admitted at once, cancelled without text; the finally block's second call is ignored.
    clock.now = 2.0
    b = RequestTimer(metrics, clock)
    b.submitted()
    b.admitted()
    clock.now = 2.25
    b.finished(FinishReason.CANCELLED, Usage(prompt_tokens=4, completion_tokens=0))
    clock.now = 9.0
    b.finished("cancelled")

    # C, D: rejected (enum and string); E: one delta, then an error, without usage.
    RequestTimer(metrics, clock).rejected(RejectReason.QUEUE_FULL)
    d = RequestTimer(metrics, clock)
    d.rejected("draining")
    d.rejected("draining")
    d.finished("finished")
    clock.now = 3.0
    e = RequestTimer(metrics, clock)
    e.submitted()
    clock.now = 3.25
    e.delta()
    clock.now = 3.5
    e.finished(FinishReason.ERROR)

    # F: observed directly; length counts as finished.
    metrics.observe_request(0.125, FinishReason.LENGTH, 5, 1)
    metrics.observe_request(0.25, "finished", 1, 1)

    stats = _stats(running=2, waiting=1, rejected_total=2, cancelled_total=1, steps_total=17,
                   draining=True, lost="CUDA error")  # fmt: skip
    text = metrics.render(stats)
    families = parse(text)
    assert set(families) == set(FAMILIES)

    def v(name: str, **labels: str) -> float:
        return value(families, name, name, **labels)

    requests = "chatstream_requests_total"
    assert v(requests, outcome="finished") == 3
    assert v(requests, outcome="cancelled") == 1
    assert v(requests, outcome="error") == 1
    assert v(requests, outcome="rejected") == 2
    rejected = "chatstream_rejected_requests_total"
    assert [v(rejected, reason=r.value) for r in RejectReason] == [1, 1, 0, 0]
    assert v("chatstream_prompt_tokens_total") == 7 + 4 + 0 + 5 + 1
    assert v("chatstream_generated_tokens_total") == 3 + 0 + 0 + 1 + 1

    def hist(name: str) -> tuple[float, float]:
        return (value(families, name, name + "_sum"), value(families, name, name + "_count"))

    queue = "chatstream_queue_time_seconds"
    assert hist(queue) == (0.015625, 2)
    assert [_bucket(families, queue, le) for le in ("0.005", "0.01", "0.025", "+Inf")] == [
        1, 1, 2, 2
    ]  # fmt: skip
    ttft = "chatstream_time_to_first_token_seconds"
    assert hist(ttft) == (0.75, 2)
    assert [_bucket(families, ttft, le) for le in ("0.1", "0.25", "0.5", "1")] == [0, 1, 2, 2]
    itl = "chatstream_inter_token_latency_seconds"
    assert hist(itl) == (0.09375, 2)
    assert [_bucket(families, itl, le) for le in ("0.025", "0.05", "0.075")] == [0, 1, 2]
    duration = "chatstream_request_duration_seconds"
    assert hist(duration) == (1.0 + 0.25 + 0.5 + 0.125 + 0.25, 5)
    assert [_bucket(families, duration, le) for le in ("0.1", "0.25", "0.5", "1")] == [0, 3, 4, 5]

    assert v("chatstream_requests_running") == 2
    assert v("chatstream_requests_waiting") == 1
    assert v("chatstream_slots") == 4
    assert v("chatstream_queue_capacity") == 8
    assert v("chatstream_draining") == 1
    assert v("chatstream_model_available") == 0
    assert v("chatstream_steps_total") == 17
    assert v("chatstream_engine_cancelled_total") == 1
    assert v("chatstream_engine_rejected_total") == 2

    # Engine families follow the latest snapshot; request families keep their counts.
    families = parse(metrics.render(_stats(steps_total=20)))
    assert v("chatstream_draining") == 0
    assert v("chatstream_model_available") == 1
    assert v("chatstream_steps_total") == 20
    assert v("chatstream_requests_running") == 0
    assert v(requests, outcome="finished") == 3


def test_extra_families_render_after() -> None:
    metrics = ChatMetrics()
    metrics.registry.register(Gauge("app_info", "App.", ("version",))).labels(version="1").set(1)
    text = metrics.render(_stats())
    assert text.endswith('# TYPE app_info gauge\napp_info{version="1"} 1\n')
    parse(text)


def test_invalid_observations() -> None:
    metrics = ChatMetrics()
    with pytest.raises(ValueError, match="unknown outcome 'rejected'"):
        metrics.observe_request(1.0, "rejected", 1, 1)
    with pytest.raises(ValueError, match="unknown outcome"):
        metrics.observe_request(1.0, "stopped", 1, 1)
    with pytest.raises(ValueError, match="not a valid RejectReason"):
        metrics.observe_rejected("busy")
    timer = RequestTimer(metrics, FakeClock())
    for call in (timer.admitted, timer.delta, lambda: timer.finished("finished")):
        with pytest.raises(RuntimeError, match="submitted"):
            call()
    timer.submitted()
    with pytest.raises(ValueError, match="unknown outcome"):
        timer.finished("timeout")
    timer.finished("error")  # the failed call did not count as the terminal one
    families = parse(metrics.render(_stats()))
    name = "chatstream_requests_total"
    assert value(families, name, name, outcome="error") == 1
    assert value(families, name, name, outcome="finished") == 0


def test_default_clock_is_monotonic() -> None:
    metrics = ChatMetrics()
    timer = RequestTimer(metrics)
    timer.submitted()
    timer.delta()
    timer.finished(FinishReason.STOP, Usage(prompt_tokens=1, completion_tokens=1))
    families = parse(metrics.render(_stats()))
    name = "chatstream_request_duration_seconds"
    assert value(families, name, name + "_count") == 1
    assert value(families, name, name + "_sum") >= 0
