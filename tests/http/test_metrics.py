"""ChatMetrics on prometheus_client: families, pre-created series, scripted requests, engine
snapshots, one registry per instance, the process and platform collectors."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import math
import platform
import re
import sys
import time

import prometheus_client
import pytest
from prometheus_client import REGISTRY, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from chatstream.adapters.http import metrics as metrics_module
from chatstream.adapters.http.metrics import (
    CONTENT_TYPE,
    DURATION_BUCKETS,
    INTER_TOKEN_BUCKETS,
    LATENCY_BUCKETS,
    TOKEN_BUCKETS,
    ChatMetrics,
    RequestTimer,
)
from chatstream.core import (
    Admitted,
    EngineStatistics,
    Finished,
    FinishReason,
    PrefixStatistics,
    Queued,
    RejectReason,
    TextDelta,
    Usage,
)

# The families as exposed: name on the TYPE line -> (type, help). prometheus_client's parser
# names a counter family without its ``_total``; :func:`parse` keys them as exposed.
FAMILIES = {
    "chatstream_queue_time_seconds": (
        "histogram",
        "Time from submission to admission into a slot.",
    ),
    "chatstream_time_to_first_token_seconds": (
        "histogram",
        "Time from submission to the first text of the reply.",
    ),
    "chatstream_inter_token_latency_seconds": (
        "histogram",
        "Time between consecutive text deltas of one request.",
    ),
    "chatstream_request_duration_seconds": (
        "histogram",
        "Time from submission to the end of a request that was not rejected.",
    ),
    "chatstream_generated_tokens_total": (
        "counter",
        "Completion tokens of ended requests, cancelled and failed ones included.",
    ),
    "chatstream_prompt_tokens_total": (
        "counter",
        "Prompt tokens of ended requests that got a slot, cancelled ones included.",
    ),
    "chatstream_requests_total": ("counter", "Requests by outcome."),
    "chatstream_rejected_requests_total": ("counter", "Rejected requests by reason."),
    # vLLM's request families, labelled with model_name.
    "chatstream_request_success_total": (
        "counter",
        "Ended requests by finished_reason: stop, length, abort (cancelled) or error.",
    ),
    "chatstream_request_prompt_tokens": (
        "histogram",
        "Prompt tokens of each ended request that got a slot.",
    ),
    "chatstream_request_generation_tokens": (
        "histogram",
        "Generated tokens of each ended request that got a slot.",
    ),
    "chatstream_request_prefill_time_seconds": (
        "histogram",
        "Time from admission into a slot to the first text of the reply.",
    ),
    "chatstream_request_decode_time_seconds": (
        "histogram",
        "Time from the first text of the reply to the end of the request.",
    ),
    "chatstream_request_inference_time_seconds": (
        "histogram",
        "Time from admission into a slot to the end of the request.",
    ),
    "chatstream_request_time_per_output_token_seconds": (
        "histogram",
        "Decode time of a request divided by its generated tokens after the first.",
    ),
    "chatstream_requests_running": ("gauge", "Requests holding a slot."),
    "chatstream_requests_waiting": ("gauge", "Requests waiting for a slot."),
    "chatstream_slots": ("gauge", "Slots: requests that can run at once."),
    "chatstream_queue_capacity": ("gauge", "Requests that can wait for a slot."),
    "chatstream_draining": ("gauge", "1 while draining for shutdown, else 0."),
    "chatstream_model_available": ("gauge", "1 while the model can generate, else 0."),
    "chatstream_prefix_cache_parked_tokens": (
        "gauge",
        "Tokens whose KV slots keep after their request left, ready for reuse.",
    ),
    "chatstream_prefix_cache_parked_bytes": (
        "gauge",
        "Bytes of KV that slots keep after their request left.",
    ),
    "chatstream_prefix_cache_stored_tokens": (
        "gauge",
        "Tokens whose KV host memory keeps for conversations no slot holds.",
    ),
    "chatstream_prefix_cache_stored_bytes": (
        "gauge",
        "Bytes of KV that host memory keeps (never above --prefix-cache-mb).",
    ),
    "chatstream_steps_total": ("counter", "Model steps planned by the engine."),
    "chatstream_engine_cancelled_total": ("counter", "Requests cancelled in the engine."),
    "chatstream_engine_rejected_total": ("counter", "Requests rejected by the engine."),
    "chatstream_engine_failed_total": (
        "counter",
        "Requests that ended in an error of the model.",
    ),
    "chatstream_prefix_cache_queried_tokens_total": (
        "counter",
        "Prompt tokens looked up in the prefix cache (every admitted request's prompt).",
    ),
    "chatstream_prefix_cache_hit_tokens_total": (
        "counter",
        "Prompt tokens whose KV was reused instead of prefilled.",
    ),
    "chatstream_prefix_cache_restored_tokens_total": (
        "counter",
        "Of the hit tokens, those copied back from host memory.",
    ),
    "chatstream_kv_cache_usage_perc": (
        "gauge",
        "Fraction of the KV positions of all slots that running requests hold (0 to 1).",
    ),
}
# Families made by prometheus_client's Counter/Histogram: each has a ``*_created`` gauge.
REQUEST_FAMILIES = list(FAMILIES)[:15]
# Of those, the ones labelled with model_name.
MODEL_FAMILIES = REQUEST_FAMILIES[8:]
# The engine families, from a snapshot: no ``*_created``, nothing before the first render;
# all but the last (the KV usage, labelled with model_name) without labels.
ENGINE_FAMILIES = list(FAMILIES)[15:-1]
KV_USAGE = "chatstream_kv_cache_usage_perc"


def _created_name(name: str) -> str:
    return name.removesuffix("_total") + "_created"


def exposed_name(family: Metric) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def parse(text: str) -> dict[str, Metric]:
    """The families of exposition text, keyed by the name on their TYPE line.

    prometheus_client's parser turns a sample outside its family into an ``untyped`` family
    of its own: none may exist, and no family may appear twice.
    """
    assert text.endswith("\n")
    families: dict[str, Metric] = {}
    for family in text_string_to_metric_families(text):
        name = exposed_name(family)
        assert family.type != "untyped", name
        assert name not in families, name
        families[name] = family
    return families


def value(families: dict[str, Metric], family: str, sample: str, **labels: str) -> float:
    matches = [s.value for s in families[family].samples if s.name == sample and s.labels == labels]
    assert len(matches) == 1, (family, sample, labels, matches)
    return matches[0]


def buckets(families: dict[str, Metric], name: str) -> dict[float, float]:
    """A histogram's cumulative counts by upper bound (``le`` read as a float)."""
    return {
        float(s.labels["le"]): s.value for s in families[name].samples if s.name == name + "_bucket"
    }


def hist(families: dict[str, Metric], name: str, **labels: str) -> tuple[float, float]:
    """A histogram's (sum, count)."""
    return (
        value(families, name, name + "_sum", **labels),
        value(families, name, name + "_count", **labels),
    )


def _stats(
    *,
    running: int = 0,
    waiting: int = 0,
    rejected_total: int = 0,
    cancelled_total: int = 0,
    steps_total: int = 0,
    failed_total: int = 0,
    draining: bool = False,
    lost: str | None = None,
    prefix: PrefixStatistics | None = None,
    kv_tokens_used: int = 0,
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
        failed_total=failed_total,
        step_in_flight=True,
        draining=draining,
        lost=lost,
        prefix=prefix,
        kv_tokens_used=kv_tokens_used,
        kv_tokens_capacity=4 * 64,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------- exposition


def test_content_type_is_the_0_0_4_text_format() -> None:
    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4 == "text/plain; version=0.0.4; charset=utf-8"
    # What the library's own exporters answer a scraper that asks for nothing in particular.
    assert prometheus_client.exposition.choose_encoder("")[1] == CONTENT_TYPE


def test_the_hand_written_client_is_gone() -> None:
    assert set(metrics_module.__all__) == {
        "CONTENT_TYPE",
        "DURATION_BUCKETS",
        "INTER_TOKEN_BUCKETS",
        "LATENCY_BUCKETS",
        "TOKEN_BUCKETS",
        "ChatMetrics",
        "RequestTimer",
    }
    with pytest.raises(ImportError):
        importlib.import_module("chatstream.adapters.http.prometheus")


def test_every_family_with_its_type_help_and_buckets() -> None:
    families = parse(ChatMetrics().render(_stats()))
    chatstream = {name: f for name, f in families.items() if name.startswith("chatstream_")}
    created = {_created_name(name) for name in REQUEST_FAMILIES}
    assert set(chatstream) == set(FAMILIES) | created
    for name, (kind, documentation) in FAMILIES.items():
        assert (families[name].type, families[name].documentation) == (kind, documentation)
    for name in REQUEST_FAMILIES:
        created_family = families[_created_name(name)]
        assert created_family.type == "gauge"
        assert created_family.documentation == FAMILIES[name][1]
        assert all(s.value > 1e9 for s in created_family.samples)  # Unix timestamps
    for name, bounds in [
        ("chatstream_queue_time_seconds", LATENCY_BUCKETS),
        ("chatstream_time_to_first_token_seconds", LATENCY_BUCKETS),
        ("chatstream_inter_token_latency_seconds", INTER_TOKEN_BUCKETS),
        ("chatstream_request_duration_seconds", DURATION_BUCKETS),
    ]:
        assert list(bounds) == sorted(set(bounds))
        assert list(buckets(families, name)) == [*bounds, math.inf]
        assert all(count == 0 for count in buckets(families, name).values())
        assert hist(families, name) == (0, 0)
    assert TOKEN_BUCKETS[:4] == (1, 2, 5, 10) and TOKEN_BUCKETS[-1] == 500_000
    for name, bounds in [
        ("chatstream_request_prompt_tokens", TOKEN_BUCKETS),
        ("chatstream_request_generation_tokens", TOKEN_BUCKETS),
        ("chatstream_request_prefill_time_seconds", LATENCY_BUCKETS),
        ("chatstream_request_decode_time_seconds", DURATION_BUCKETS),
        ("chatstream_request_inference_time_seconds", DURATION_BUCKETS),
        ("chatstream_request_time_per_output_token_seconds", INTER_TOKEN_BUCKETS),
    ]:
        assert list(bounds) == sorted(set(bounds))
        assert list(buckets(families, name)) == [*bounds, math.inf]
        assert hist(families, name, model_name="") == (0, 0)


def test_labelled_series_exist_from_the_start_at_zero() -> None:
    families = parse(ChatMetrics().render(_stats()))
    requests = "chatstream_requests_total"
    assert {s.labels["outcome"]: s.value for s in families[requests].samples} == {
        "finished": 0,
        "cancelled": 0,
        "error": 0,
        "rejected": 0,
    }
    rejected = "chatstream_rejected_requests_total"
    assert {s.labels["reason"]: s.value for s in families[rejected].samples} == {
        reason.value: 0 for reason in RejectReason
    }
    assert {s.labels["reason"] for s in families[_created_name(rejected)].samples} == {
        reason.value for reason in RejectReason
    }
    for name in ("chatstream_generated_tokens_total", "chatstream_prompt_tokens_total"):
        assert value(families, name, name) == 0
    success = "chatstream_request_success_total"
    assert {
        (s.labels["model_name"], s.labels["finished_reason"]): s.value
        for s in families[success].samples
    } == {("", reason): 0 for reason in ("stop", "length", "abort", "error")}


def test_process_platform_and_gc_collectors() -> None:
    families = parse(ChatMetrics().render(_stats()))
    info = families["python_info"]
    assert info.type == "gauge"
    assert [s.labels["implementation"] for s in info.samples] == [platform.python_implementation()]
    assert [s.labels["major"] for s in info.samples] == [str(sys.version_info.major)]
    if sys.implementation.name == "cpython":
        gc_family = "python_gc_collections_total"
        assert families[gc_family].type == "counter"
        assert {s.labels["generation"] for s in families[gc_family].samples} >= {"0", "1", "2"}
        assert "python_gc_objects_collected_total" in families
    if sys.platform == "linux":
        memory = "process_resident_memory_bytes"
        assert families[memory].type == "gauge"
        assert value(families, memory, memory) > 0
        cpu = "process_cpu_seconds_total"
        assert value(families, cpu, cpu) > 0
        start = "process_start_time_seconds"
        assert 1e9 < value(families, start, start) <= time.time()


def test_families_render_in_order_and_extra_ones_after() -> None:
    metrics = ChatMetrics()
    Gauge("app_info", "App.", ("version",), registry=metrics.registry).labels(version="1").set(1)
    text = metrics.render(_stats())
    assert text.endswith('# TYPE app_info gauge\napp_info{version="1"} 1.0\n')
    names = re.findall(r"^# TYPE (\S+) ", text, re.M)
    own = [name for name in names if name in FAMILIES]
    assert own == list(FAMILIES)
    assert names.index("chatstream_engine_rejected_total") < names.index("python_info")
    assert parse(text)["app_info"].documentation == "App."


def test_registry_is_per_instance_and_not_the_global_one() -> None:
    first, second = ChatMetrics(), ChatMetrics()
    assert first.registry is not second.registry
    assert first.registry is not REGISTRY
    for _ in range(3):
        RequestTimer(first).rejected("queue_full")
    second.observe_request(0.5, FinishReason.STOP, 2, 1)
    a, b = parse(first.render(_stats(steps_total=1))), parse(second.render(_stats(steps_total=9)))
    requests = "chatstream_requests_total"
    assert value(a, requests, requests, outcome="rejected") == 3
    assert value(a, requests, requests, outcome="finished") == 0
    assert value(b, requests, requests, outcome="rejected") == 0
    assert value(b, requests, requests, outcome="finished") == 1
    steps = "chatstream_steps_total"
    assert (value(a, steps, steps), value(b, steps, steps)) == (1, 9)
    assert b"chatstream_" not in generate_latest(REGISTRY)


def test_engine_family_names_are_claimed_on_the_registry() -> None:
    metrics = ChatMetrics()
    # Before any snapshot the engine collector collects nothing...
    text = generate_latest(metrics.registry).decode()
    assert not set(ENGINE_FAMILIES) & set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    # ...but it describes its families, so nothing else can take their names.
    for name in ("chatstream_slots", "chatstream_steps_total", "chatstream_requests_total"):
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            Gauge(name, "Clash.", registry=metrics.registry)


# ---------------------------------------------------------------------------- behaviour


def test_scripted_requests() -> None:
    metrics = ChatMetrics(model_name="tiny")
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
    # What the `done` event shows: 2 tokens after the first in 0.09375 s.
    assert a.timings(3) == {"queue_ms": 15.6, "ttft_ms": 500.0, "tokens_per_s": 21.3}

    # B: admitted at once, cancelled without text; the finally block's second call is ignored.
    clock.now = 2.0
    b = RequestTimer(metrics, clock)
    b.submitted()
    b.admitted()
    clock.now = 2.25
    b.finished(FinishReason.CANCELLED, Usage(prompt_tokens=4, completion_tokens=0))
    assert b.timings(0) == {"queue_ms": 0.0, "ttft_ms": None, "tokens_per_s": None}
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
    families = parse(metrics.render(stats))

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

    queue = "chatstream_queue_time_seconds"
    assert hist(families, queue) == (0.015625, 2)
    assert [buckets(families, queue)[le] for le in (0.005, 0.01, 0.025, math.inf)] == [1, 1, 2, 2]
    ttft = "chatstream_time_to_first_token_seconds"
    assert hist(families, ttft) == (0.75, 2)
    assert [buckets(families, ttft)[le] for le in (0.1, 0.25, 0.5, 1)] == [0, 1, 2, 2]
    itl = "chatstream_inter_token_latency_seconds"
    assert hist(families, itl) == (0.09375, 2)
    assert [buckets(families, itl)[le] for le in (0.025, 0.05, 0.075)] == [0, 1, 2]
    duration = "chatstream_request_duration_seconds"
    assert hist(families, duration) == (1.0 + 0.25 + 0.5 + 0.125 + 0.25, 5)
    assert [buckets(families, duration)[le] for le in (0.1, 0.25, 0.5, 1)] == [0, 3, 4, 5]
    # le is inclusive, and the counts are cumulative up to +Inf == _count.
    for name in (queue, ttft, itl, duration):
        counts = list(buckets(families, name).values())
        assert counts == sorted(counts)
        assert counts[-1] == hist(families, name)[1]

    # vLLM's families, labelled with the model's name. The request that never got a slot
    # (E) observes no per-request tokens; the cancelled one (B) does.
    success = "chatstream_request_success_total"
    assert {r: v(success, model_name="tiny", finished_reason=r) for r in ("stop", "length")} == {
        "stop": 2,
        "length": 1,
    }
    assert v(success, model_name="tiny", finished_reason="abort") == 1
    assert v(success, model_name="tiny", finished_reason="error") == 1
    prompt = "chatstream_request_prompt_tokens"
    assert hist(families, prompt, model_name="tiny") == (7 + 4 + 5 + 1, 4)
    assert [buckets(families, prompt)[le] for le in (1, 2, 5, 10)] == [1, 1, 3, 4]
    generation = "chatstream_request_generation_tokens"
    assert hist(families, generation, model_name="tiny") == (3 + 0 + 1 + 1, 4)
    # A: admitted at 1/64 s, first text at 0.5 s, end at 1 s; B: admitted at 2 s, ended at
    # 2.25 s without text; E: text at 3.25 s, ended at 3.5 s, never admitted.
    inference = "chatstream_request_inference_time_seconds"
    assert hist(families, inference, model_name="tiny") == (1 - 0.015625 + 0.25, 2)
    prefill = "chatstream_request_prefill_time_seconds"
    assert hist(families, prefill, model_name="tiny") == (0.5 - 0.015625, 1)
    decode = "chatstream_request_decode_time_seconds"
    assert hist(families, decode, model_name="tiny") == (0.5 + 0.25, 2)
    per_token = "chatstream_request_time_per_output_token_seconds"
    assert hist(families, per_token, model_name="tiny") == (0.5 / 2, 1)

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
    assert v("chatstream_engine_cancelled_total") == 0
    assert v("chatstream_requests_running") == 0
    assert v(requests, outcome="finished") == 3
    assert hist(families, duration)[1] == 5


def test_engine_families_follow_successive_snapshots() -> None:
    metrics = ChatMetrics()
    snapshots = [
        _stats(running=1, waiting=0, steps_total=3, rejected_total=0, cancelled_total=0),
        _stats(
            running=2,
            waiting=5,
            steps_total=10,
            rejected_total=1,
            cancelled_total=0,
            prefix=PrefixStatistics(
                queried_tokens=90, hit_tokens=40, parked_tokens=12, parked_bytes=6144
            ),
        ),
        _stats(
            running=0,
            waiting=1,
            steps_total=10,
            rejected_total=4,
            cancelled_total=2,
            prefix=PrefixStatistics(queried_tokens=100, hit_tokens=40, parked_tokens=0),
        ),
        _stats(
            running=0,
            waiting=0,
            steps_total=250,
            rejected_total=4,
            cancelled_total=3,
            failed_total=6,
            draining=True,
            lost="gone",
            prefix=PrefixStatistics(
                queried_tokens=130,
                hit_tokens=60,
                parked_tokens=3,
                parked_bytes=1536,
                stored_tokens=40,
                stored_bytes=20480,
                stored_entries=1,
                restored_tokens=20,
            ),
        ),
    ]
    seen: list[tuple[float, ...]] = []
    for stats in snapshots:
        families = parse(metrics.render(stats))
        row = tuple(value(families, name, name) for name in ENGINE_FAMILIES)
        seen.append(row)
        # Mirrored totals carry no _created series of their own.
        for name in ("chatstream_steps_total", "chatstream_engine_cancelled_total"):
            assert _created_name(name) not in families
            assert [s.name for s in families[name].samples] == [name]
    # running, waiting, slots, queue capacity, draining, available, parked tokens and bytes,
    # stored tokens and bytes; steps, cancelled, rejected, failed, prefix tokens queried, hit
    # and restored (0 with no prefix cache)
    assert seen == [
        (1, 0, 4, 8, 0, 1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0),
        (2, 5, 4, 8, 0, 1, 12, 6144, 0, 0, 10, 0, 1, 0, 90, 40, 0),
        (0, 1, 4, 8, 0, 1, 0, 0, 0, 0, 10, 2, 4, 0, 100, 40, 0),
        (0, 0, 4, 8, 1, 0, 3, 1536, 40, 20480, 250, 3, 4, 6, 130, 60, 20),
    ]
    # The totals only go up when the engine's do: the values are the engine's, not sums.
    totals = [row[10:] for row in seen]
    assert all(
        all(x <= y for x, y in zip(p, q, strict=True)) for p, q in itertools.pairwise(totals)
    )
    # Rendering the same snapshot twice changes nothing.
    again = parse(metrics.render(snapshots[-1]))
    assert tuple(value(again, name, name) for name in ENGINE_FAMILIES) == seen[-1]


def test_invalid_observations() -> None:
    metrics = ChatMetrics()
    with pytest.raises(ValueError, match="unknown outcome 'rejected'"):
        metrics.observe_request(1.0, "rejected", 1, 1)
    with pytest.raises(ValueError, match="unknown outcome"):
        metrics.observe_request(1.0, "stopped", 1, 1)
    with pytest.raises(ValueError, match="negative token counts"):
        metrics.observe_request(1.0, "finished", -1, 1)
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
    assert value(families, name, name, outcome="rejected") == 0  # "busy" was not counted
    duration = "chatstream_request_duration_seconds"
    assert hist(families, duration)[1] == 1  # the failed calls observed nothing
    assert value(families, "chatstream_prompt_tokens_total", "chatstream_prompt_tokens_total") == 0


def test_default_clock_is_monotonic() -> None:
    assert inspect.signature(RequestTimer).parameters["clock"].default is time.monotonic
    metrics = ChatMetrics()
    timer = RequestTimer(metrics)
    timer.submitted()
    timer.delta()
    timer.finished(FinishReason.STOP, Usage(prompt_tokens=1, completion_tokens=1))
    families = parse(metrics.render(_stats()))
    name = "chatstream_request_duration_seconds"
    assert value(families, name, name + "_count") == 1
    assert value(families, name, name + "_sum") >= 0


def test_cancelled_requests_count_their_tokens_so_far() -> None:
    metrics = ChatMetrics(model_name="tiny")
    clock = FakeClock()
    # Admitted, two deltas, then its client left: the handle's usage says 5 tokens so far.
    running = RequestTimer(metrics, clock)
    running.submitted()
    for event in (
        Admitted(request_id=1, slot=0),
        TextDelta(request_id=1, text="a"),
        TextDelta(request_id=1, text="b"),
    ):
        running.observe(event)
    running.finished(FinishReason.CANCELLED, Usage(prompt_tokens=12, completion_tokens=5))
    # Cancelled while waiting: its prompt was never prefilled, so it is not counted.
    waiting = RequestTimer(metrics, clock)
    waiting.submitted()
    waiting.observe(Queued(request_id=2, position=1))
    waiting.finished(FinishReason.CANCELLED, Usage(prompt_tokens=30, completion_tokens=0))
    families = parse(metrics.render(_stats()))

    def v(name: str, **labels: str) -> float:
        return value(families, name, name, **labels)

    assert v("chatstream_prompt_tokens_total") == 12
    assert v("chatstream_generated_tokens_total") == 5
    assert v("chatstream_requests_total", outcome="cancelled") == 2
    assert v("chatstream_request_success_total", model_name="tiny", finished_reason="abort") == 2
    assert hist(families, "chatstream_request_prompt_tokens", model_name="tiny") == (12, 1)
    assert hist(families, "chatstream_request_generation_tokens", model_name="tiny") == (5, 1)


def test_observe_takes_a_finished_event_with_its_reason() -> None:
    metrics = ChatMetrics(model_name="tiny")
    timer = RequestTimer(metrics, FakeClock())
    timer.submitted()
    timer.observe(Admitted(request_id=1, slot=0))
    usage = Usage(prompt_tokens=3, completion_tokens=2)
    timer.observe(Finished(request_id=1, reason=FinishReason.LENGTH, usage=usage))
    timer.observe(Finished(request_id=1, reason=FinishReason.STOP, usage=usage))  # ignored
    families = parse(metrics.render(_stats()))
    success = "chatstream_request_success_total"
    assert value(families, success, success, model_name="tiny", finished_reason="length") == 1
    assert value(families, success, success, model_name="tiny", finished_reason="stop") == 0


def test_model_name_is_read_at_each_observation_and_scrape() -> None:
    current = {"name": "before"}

    def model_name() -> str:
        return current["name"]

    metrics = ChatMetrics(model_name=model_name)
    metrics.observe_request(0.5, FinishReason.STOP, 2, 1)
    current["name"] = "served"
    families = parse(metrics.render(_stats(kv_tokens_used=64)))
    success = "chatstream_request_success_total"
    assert value(families, success, success, model_name="before", finished_reason="stop") == 1
    # The new name's series exist from its first scrape, at 0.
    assert value(families, success, success, model_name="served", finished_reason="stop") == 0
    assert value(families, KV_USAGE, KV_USAGE, model_name="served") == 0.25


def test_kv_usage_is_the_share_of_slot_positions_held() -> None:
    metrics = ChatMetrics(model_name="m")
    for used, share in ((0, 0.0), (64, 0.25), (256, 1.0)):
        families = parse(metrics.render(_stats(kv_tokens_used=used)))
        assert value(families, KV_USAGE, KV_USAGE, model_name="m") == share
    empty = dataclasses.replace(_stats(), kv_tokens_capacity=0)
    assert value(parse(metrics.render(empty)), KV_USAGE, KV_USAGE, model_name="m") == 0
