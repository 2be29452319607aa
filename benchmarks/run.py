"""The benchmark orchestrator: every scenario in one invocation, side by side.

CPU (default): for each number of compute threads (``--threads 1,2``), each model
(SmolLM2-135M-Instruct; ``--tiny`` adds the tiny test model) and each C (default 1, 2, 8;
``--with-32`` adds 32):

1. chatstream through HTTP, once per ``--quantize`` value (default ``auto,none``: the default
   configuration, int8 for SmolLM2 on a CPU with VNNI, and float32): a server process
   (``chatstream.server``, uvicorn/asyncio or ``--loop trio`` for hypercorn/trio) serving
   ``benchmarks.chatstream_app`` with ``num_of_concurrent_executions = C``; the load
   generator runs C closed-loop SSE clients with fixed-length replies (``ignore_eos``);
2. the original ChatStream (chatstream==0.2.0, its own venv, ``benchmarks.original_app``),
   the same model, prompts, max_new_tokens and C;
3. with ``--with-peers`` (``benchmarks/peers.py``): llama.cpp's server on the Q4_1 GGUF
   (fixed-length replies too), and transformers serve with its continuous batching beside
   chatstream's OpenAI route (both end at EOS: compare them with each other), each through
   its OpenAI stream, with the same prompts;
4. bare loops on the same model (``benchmarks.bare``): batch-1 per request, and batched.

Each server is started, warmed up, its lag probe reset, loaded, read and stopped (SIGTERM).

GPU (``--gpu``, see ``benchmarks/gpu.sh``): a random-weight model of TinyLlama-1.1B's shape
in bf16, chatstream through HTTP at C = 1, 8, 32, 128 with its decode steps replayed from CUDA
graphs, the original-style interleaved loop, batched generate and the lean batched step at the
same C, the physical limit, then chatstream eager (``cuda_graphs=False``) at every C.
``--cpu-dry-run`` runs that same path at toy size on the CPU (the graphs by a stand-in that
re-runs the captured function).

Writes ``results.jsonl``, ``table.md`` and ``plot.png`` (and ``servers.log``) into
``benchmarks/results/<timestamp>/`` or ``--out``.

    python -m benchmarks.run                      # SmolLM2, C = 1, 2, 8, with the original
    python -m benchmarks.run --concurrency 1,8,32 --threads 1,2 --with-peers --no-bare
    python -m benchmarks.run --tiny --with-32     # also the tiny model, also C = 32
    python -m benchmarks.run --replot benchmarks/results/<timestamp>   # table and plot again
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import loadgen, peers
from benchmarks.processes import (
    chatstream_command,
    free_port,
    load_average,
    log,
    server,
    server_env,
)

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
TINY = "tiny test model"
ORIGINAL_VENV = Path(os.environ.get("ORIGINAL_VENV", HERE / ".venv-original"))

# --------------------------------------------------------------------------- helpers


class Deadline:
    """The whole run's time budget (the GPU script must end in time)."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def expired(self, margin: float = 0.0) -> bool:
        return self.left() < margin


def run_http_scenario(
    *,
    system: str,
    url: str,
    fmt: loadgen.Format,
    concurrency: int,
    requests: int,
    max_new_tokens: int,
    openai_body: dict[str, Any] | None = None,
    probes: bool = True,
) -> dict[str, Any]:
    """Warm up, measure idle lag, reset the probe, run the load, read the probe (the
    peers have no probe: ``probes=False``)."""
    params = None
    if fmt == "sse":
        params = {"max_new_tokens": max_new_tokens, "ignore_eos": True}
        warm_params = {"max_new_tokens": 8, "ignore_eos": True}
    body = {**(openai_body or {}), "max_tokens": max_new_tokens}

    async def go() -> dict[str, Any]:
        # Warm-up: the first forward passes allocate and choose kernels.
        if fmt == "openai":
            for c in (1, concurrency):
                await loadgen.run_load(
                    url, concurrency=c, requests=c, fmt=fmt, openai_body={**body, "max_tokens": 8}
                )
        elif fmt == "sse":
            await loadgen.run_load(
                url, concurrency=1, requests=1, fmt=fmt, generation_params=warm_params
            )
            await loadgen.run_load(
                url, concurrency=concurrency, requests=concurrency, fmt=fmt,
                generation_params=warm_params,
            )  # fmt: skip
        else:  # the original's reply length is the server's max_new_tokens
            await loadgen.run_load(url, concurrency=1, requests=1, fmt=fmt)
        no_lag = {"p50_ms": None, "p99_ms": None, "max_ms": None, "samples": 0}
        idle = no_lag
        if probes:
            await loadgen.reset_lag(url)
            await asyncio.sleep(1.0)
            idle = await loadgen.read_lag(url)
            await loadgen.reset_lag(url)
        if system == "chatstream" and probes:
            await loadgen.reset_steps(url)
        load_before = load_average()
        report, _ = await loadgen.run_load(
            url,
            concurrency=concurrency,
            requests=requests,
            fmt=fmt,
            generation_params=params,
            openai_body=body,
        )
        lag = await loadgen.read_lag(url) if probes else no_lag
        steps = await loadgen.read_steps(url) if system == "chatstream" and probes else {}
        record = report.as_dict()
        record.pop("url", None)
        record.update(
            system=system,
            scenario="http",
            lag_p50_ms=lag["p50_ms"],
            lag_p99_ms=lag["p99_ms"],
            lag_max_ms=lag["max_ms"],
            lag_samples=lag["samples"],
            idle_lag_p99_ms=idle["p99_ms"],
            load_avg_before=load_before,
            load_avg_after=load_average(),
        )
        if steps.get("steps"):
            record.update(
                model_busy=steps["busy"],
                step_gap_p50_ms=steps["gap_p50_ms"],
                step_gap_p99_ms=steps["gap_p99_ms"],
                decode_step_p50_ms=steps["decode_step_p50_ms"],
                mean_step_batch=steps["mean_batch"],
                graph_steps=steps.get("graph_steps"),
                eager_steps=steps.get("eager_steps"),
                steps=steps["steps"],
            )
        return record

    return asyncio.run(go())


# --------------------------------------------------------------------------- scenarios


class Runner:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.results = out / "results.jsonl"
        self.logfile = (out / "servers.log").open("a", encoding="utf-8")
        self.deadline = Deadline(args.budget_s)
        self.records: list[dict[str, Any]] = []
        #: Compute threads of the servers now being measured (each of --threads in turn).
        self.threads: int = args.threads[0]

    def emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if record.get("kind") == "result":
            log(
                f"{record.get('model')} C={record.get('concurrency')} {_label(record)} "
                f"threads={record.get('torch_threads')}: {record.get('tokens_per_s')} tok/s"
                + (f", lag p99 {record['lag_p99_ms']} ms" if "lag_p99_ms" in record else "")
                + (f" ERROR {record['error']}" if record.get("error") else "")
            )

    def base_env(self) -> dict[str, str]:
        return server_env()

    def chatstream(
        self,
        model: str,
        model_dir: str,
        c: int,
        quantize: str,
        *,
        route: str = "sse",
        graphs: bool | None = None,
    ) -> None:
        """One chatstream server; ``graphs``: decode steps from CUDA graphs or eager (on the
        CPU dry run, True is the re-running stand-in); None: the server's default."""
        a = self.args
        port = free_port()
        env = self.base_env()
        env.update(
            BENCH_MODEL=model_dir,
            BENCH_DEVICE=a.device,
            BENCH_DTYPE=a.dtype,
            BENCH_CONCURRENCY=str(c),
            BENCH_MAX_NEW_TOKENS=str(a.max_new_tokens),
            BENCH_TORCH_THREADS=str(self.threads),
            BENCH_QUANTIZE=quantize,
            BENCH_CUDA_GRAPHS={None: "auto", True: "1", False: "0"}[graphs],
        )
        command = chatstream_command(port, a.loop)
        weights = weights_of(quantize, device=a.device, dtype=a.dtype, model_dir=model_dir)
        extra: dict[str, Any] = {"weights": weights, "route": route}
        if graphs is not None:
            extra["cuda_graphs"] = "on" if graphs else "off"
        # The OpenAI route ends replies at EOS, as transformers serve does.
        body = {"model": "chatstream", "temperature": 0}
        fmt: loadgen.Format = "openai" if route == "openai" else "sse"
        self._http("chatstream", model, c, command, env, port, fmt, extra=extra, openai_body=body)

    def llama_cpp(self, model: str, c: int) -> None:
        from chatstream.embedded import embedded_gguf

        port = free_port()
        command, extra_env = peers.llama_cpp_command(
            embedded_gguf(), port=port, concurrency=c, threads=self.threads
        )
        env = {**self.base_env(), **extra_env}
        body = {
            "model": "SmolLM2-135M-Instruct",
            "temperature": 0,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
        extra = {"weights": "Q4_1", "route": "openai"}
        self._http("llama.cpp", model, c, command, env, port, "openai", extra, body, "/health")

    def transformers_serve(self, model: str, model_dir: str, c: int) -> None:
        executable = peers.transformers_serve_executable()
        assert executable is not None
        port = free_port()
        command, extra_env = peers.transformers_serve_command(
            executable, Path(model_dir), port=port, threads=self.threads
        )
        env = {**self.base_env(), **extra_env}
        body = {"model": str(model_dir), "temperature": 0}  # 422 to ignore_eos, stream_options
        extra = {"weights": "fp32", "route": "openai"}
        self._http(
            "transformers serve", model, c, command, env, port, "openai", extra, body, "/v1/models"
        )

    def original(self, model: str, model_dir: str, c: int) -> None:
        a = self.args
        port = free_port()
        env = self.base_env()
        env["PYTHONPATH"] = str(ROOT)  # never our src/: there `chatstream` is the original
        env.update(
            BENCH_MODEL_DIR=model_dir,
            BENCH_DEVICE=a.device,
            BENCH_CONCURRENCY=str(c),
            BENCH_MAX_NEW_TOKENS=str(a.max_new_tokens),
            BENCH_TORCH_THREADS=str(self.threads),
        )
        python = str(ORIGINAL_VENV / "bin" / "python")
        command = [python, "-m", "benchmarks.original_app", "--port", str(port)]
        self._http("original", model, c, command, env, port, "original")

    def _http(
        self,
        system: str,
        model: str,
        c: int,
        command: list[str],
        env: dict[str, str],
        port: int,
        fmt: loadgen.Format,
        extra: dict[str, Any] | None = None,
        openai_body: dict[str, Any] | None = None,
        ready: str = "/bench/lag",
    ) -> None:
        """Serve with ``command`` until ``ready`` answers and measure; ``extra`` goes into
        the record. Only chatstream and the original answer ``/bench/lag`` (the lag probe);
        the peers are waited for on their own health route and have no probe."""
        a = self.args
        base = {
            "kind": "result",
            "system": system,
            "scenario": "http",
            "model": model,
            "concurrency": c,
            "max_new_tokens": a.max_new_tokens,
            "loop": a.loop if system == "chatstream" else "asyncio",
            "device": a.device,
            "torch_threads": self.threads,
            **(extra or {}),
        }
        if self.deadline.expired(margin=30):
            self.emit({**base, "error": "skipped: time budget spent"})
            return
        per_worker = a.tiny_requests_per_worker if model == TINY else a.requests_per_worker
        requests = max(per_worker * c, a.min_requests)
        try:
            name = f"{system} {model} C={c} threads={self.threads}"
            with server(name, command, env, port, self.logfile, ready=ready) as url:
                record = run_http_scenario(
                    system=system,
                    url=url,
                    fmt=fmt,
                    concurrency=c,
                    requests=requests,
                    max_new_tokens=a.max_new_tokens,
                    openai_body=openai_body,
                    probes=ready == "/bench/lag",
                )
            self.emit({**base, **record})
        except Exception as error:  # one failure must not lose the rest
            self.emit({**base, "error": f"{type(error).__name__}: {error}"[:500]})

    def bare(self, model: str, model_dir: str, concurrencies: Sequence[int]) -> None:
        a = self.args
        if self.deadline.expired(margin=20):
            self.emit({"kind": "result", "system": "bare", "model": model, "error": "skipped"})
            return
        command = [
            sys.executable, "-m", "benchmarks.bare",
            "--model", model_dir, "--device", a.device, "--dtype", a.dtype,
            "--threads", str(self.threads),
            "--concurrency", ",".join(str(c) for c in concurrencies),
            "--max-new-tokens", str(a.max_new_tokens),
            "--scenarios", a.bare_scenarios,
            "--copy-bytes", str(a.copy_bytes),
        ]  # fmt: skip
        if a.bare_deadline:
            command += ["--deadline", str(a.bare_deadline)]
        self.logfile.write(f"\n===== bare {model}: {' '.join(command)}\n")
        self.logfile.flush()
        timeout = max(30.0, min(self.deadline.left() - 10, 3600.0))
        try:
            result = subprocess.run(
                command,
                cwd=ROOT,
                env=self.base_env(),
                stdout=subprocess.PIPE,
                stderr=self.logfile,
                text=True,
                timeout=timeout,
            )
            output: str | None = result.stdout
            if result.returncode:
                self.emit(
                    {"kind": "result", "system": "bare", "model": model,
                     "error": f"exit {result.returncode} (see servers.log)"}
                )  # fmt: skip
        except subprocess.TimeoutExpired as error:
            output = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout
            self.emit({"kind": "result", "system": "bare", "model": model, "error": "timeout"})
        for line in (output or "").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                record.update(kind="result", system="bare", model=model)
                self.emit(record)


# --------------------------------------------------------------------------- output


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


SYSTEM_ORDER = {
    ("chatstream", "http"): 0,
    ("original", "http"): 1,
    ("llama.cpp", "http"): 2,
    ("transformers serve", "http"): 3,
    ("bare", "bare_batch1_sequential"): 4,
    ("bare", "bare_interleaved_batch1"): 5,
    ("bare", "bare_generate_batched"): 6,
    ("bare", "bare_step_batched"): 7,
    ("bare", "physical_limit"): 8,
}

LABELS = {
    ("chatstream", "http"): "chatstream (HTTP)",
    ("original", "http"): "original 0.2.0 (HTTP)",
    ("llama.cpp", "http"): "llama.cpp server",
    ("transformers serve", "http"): "transformers serve CB",
    ("bare", "bare_batch1_sequential"): "bare: batch-1, one request after another",
    ("bare", "bare_interleaved_batch1"): "bare: batch-1 loops interleaved (original-style)",
    ("bare", "bare_generate_batched"): "bare: model.generate, whole batch known",
    ("bare", "bare_step_batched"): "bare: lean batched greedy step",
    ("bare", "physical_limit"): "physical limit: weights / bandwidth",
}


def _label(r: dict[str, Any]) -> str:
    key = (r.get("system"), r.get("scenario"))
    label = LABELS.get(key, f"{r.get('system')} {r.get('scenario')}")  # type: ignore[arg-type]
    if r.get("weights") or r.get("route"):
        # chatstream and the peers: the weights, and the route (* ends replies at EOS).
        label = label.removesuffix(" (HTTP)")
        route = {"sse": "SSE", "openai": "OpenAI"}.get(str(r.get("route")), "HTTP")
        label += f", {r.get('weights', '?')} ({route})"
        if r.get("system") == "transformers serve" or (
            r.get("system") == "chatstream" and r.get("route") == "openai"
        ):
            label += "*"
    if r.get("cuda_graphs"):
        label += ", CUDA graphs" if r["cuda_graphs"] == "on" else ", eager"
    if r.get("scenario") == "physical_limit":
        label += (
            " (assumed 3.35 TB/s)"
            if r.get("bandwidth") == "assumed_h100_sxm"
            else (f" (measured copy {r.get('bandwidth_bytes_per_s', 0) / 1e9:.0f} GB/s)")
        )
    if r.get("truncated"):
        label += " (cut at deadline)"
    return label


def _order(r: dict[str, Any]) -> tuple[int, int, int, str]:
    system = SYSTEM_ORDER.get((str(r.get("system")), str(r.get("scenario"))), 9)
    weights = {"int8": 0, "bf16": 1, "fp32": 2}.get(str(r.get("weights")), 3)
    graphs = {"on": "0", "off": "1"}.get(str(r.get("cuda_graphs")), "")
    return (system, r.get("route") == "openai", weights, graphs + str(r.get("bandwidth", "")))


def weights_of(quantize: str, *, device: str, dtype: str, model_dir: str) -> str:
    """What chatstream's weights will be for ``quantize`` ("auto" resolved as the app does)."""
    if quantize == "auto":
        from benchmarks.models import is_embedded
        from chatstream.adapters.model.quantization import auto_quantize

        quantize = auto_quantize(device=device, embedded=is_embedded(model_dir)) or "none"
    if quantize == "none":
        return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
    return quantize


def _loads(values: Sequence[float] | None) -> str:
    return "–" if not values else " / ".join(f"{v:.2f}" for v in values)


def write_table(records: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> str:
    results = [r for r in records if r.get("kind") == "result"]
    lines = [
        f"# Benchmark results ({meta['started']})",
        "",
        f"- machine: {meta['machine']}",
        f"- versions: {meta['versions']}",
        f"- command: `{meta['command']}`",
        f"- settings: max_new_tokens={meta['max_new_tokens']}, greedy, fixed-length replies "
        f"(* : ends at EOS; compare * with *), "
        f"compute threads={meta['torch_threads']}, device={meta['device']}, "
        f"requests per C = max({meta['requests_per_worker']}·C, {meta['min_requests']}) "
        f"(tiny model: {meta.get('tiny_requests_per_worker', meta['requests_per_worker'])}·C), "
        f"chatstream loop={meta['loop']}",
        f"- load average (1/5/15 min) at start {_loads(meta['load_avg_start'])}, "
        f"at end {_loads(meta.get('load_avg_end'))}",
        "",
        "Times in ms. ×orig: tokens/s over the original's at the same model and C (where the "
        "original is not run, as on GPU: over the original-style interleaved batch-1 loop). "
        "Loop lag: how late a 5 ms sleep wakes inside the server while it serves the load.",
        "",
    ]
    groups = list(
        dict.fromkeys((r["model"], r.get("torch_threads")) for r in results if r.get("model"))
    )
    header = (
        "| C | system | tok/s | ×orig | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | "
        "queue p50 | queue p99 | loop lag p50 | loop lag p99 | loop lag max | rej | err |"
    )
    for model, threads in groups:
        rows = [r for r in results if r.get("model") == model and r.get("torch_threads") == threads]
        lines += [f"## {model}, {threads} compute thread(s)", "", header, "|" + "---|" * 15]
        cs = sorted({r["concurrency"] for r in rows if isinstance(r.get("concurrency"), int)})
        for c in cs:
            at_c = [r for r in rows if r.get("concurrency") == c]
            # The original over HTTP; on GPU, where it is not run, its schedule run bare.
            original = next(
                (r for r in at_c if r.get("system") == "original" and not r.get("error")), None
            ) or next(
                (
                    r
                    for r in at_c
                    if r.get("scenario") == "bare_interleaved_batch1" and not r.get("error")
                ),
                None,
            )
            at_c.sort(key=_order)
            for r in at_c:
                if r.get("error"):
                    lines.append(f"| {c} | {_label(r)} | error: {r['error'][:80]} |" + " |" * 12)
                    continue
                ratio = None
                if original and original.get("tokens_per_s") and r.get("tokens_per_s"):
                    ratio = r["tokens_per_s"] / original["tokens_per_s"]
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            str(c),
                            _label(r),
                            _fmt(r.get("tokens_per_s")),
                            "–" if ratio is None else f"{ratio:.2f}×",
                            _fmt(r.get("ttft_p50_ms"), 0),
                            _fmt(r.get("ttft_p99_ms"), 0),
                            _fmt(r.get("itl_p50_ms")),
                            _fmt(r.get("itl_p99_ms")),
                            _fmt(r.get("queue_wait_p50_ms")),
                            _fmt(r.get("queue_wait_p99_ms")),
                            _fmt(r.get("lag_p50_ms"), 2),
                            _fmt(r.get("lag_p99_ms"), 2),
                            _fmt(r.get("lag_max_ms"), 2),
                            _fmt(r.get("rejected")),
                            _fmt(r.get("errors")),
                        ]
                    )
                    + " |"
                )
        lines.append("")
        lines += _model_thread_table(rows)
    errors = [r for r in results if r.get("error") and not r.get("concurrency")]
    for r in errors:
        where = " ".join(str(r[k]) for k in ("model", "system") if r.get(k)) or "run"
        lines.append(f"- {where}: {r['error']}")
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def _model_thread_table(rows: list[dict[str, Any]]) -> list[str]:
    """chatstream's model thread during each HTTP run (from ``/bench/steps``)."""
    traced = [r for r in rows if r.get("system") == "chatstream" and r.get("model_busy")]
    if not traced:
        return []
    lines = [
        "chatstream's model thread: the share of the run it spent in steps, its wait between "
        "two steps, the time of a step without prefill, and the requests a step advances.",
        "",
        "| C | system | steps | busy | gap p50 | gap p99 | decode step p50 | mean batch | "
        "decode graph / eager |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(traced, key=lambda r: (int(r["concurrency"]), _order(r))):
        lines.append(
            f"| {r['concurrency']} | {_label(r)} | {r['steps']} | {100 * r['model_busy']:.1f} % | "
            f"{_fmt(r.get('step_gap_p50_ms'), 2)} | {_fmt(r.get('step_gap_p99_ms'), 2)} | "
            f"{_fmt(r.get('decode_step_p50_ms'), 2)} | {_fmt(r.get('mean_step_batch'), 2)} | "
            f"{_fmt(r.get('graph_steps'))} / {_fmt(r.get('eager_steps'))} |"
        )
    return [*lines, ""]


def write_plot(records: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        log("matplotlib is missing: no plot (pip install matplotlib)")
        return False
    results = [
        r
        for r in records
        if r.get("kind") == "result" and not r.get("error") and r.get("tokens_per_s")
    ]
    groups = list(dict.fromkeys((r["model"], r.get("torch_threads")) for r in results))
    if not groups:
        return False
    # One series per label (system, weights, route), in table order, one colour each.
    plotted = [r for r in results if r.get("scenario") != "physical_limit"]
    series = list(dict.fromkeys(_label(r) for r in sorted(plotted, key=_order)))
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.6 * len(groups)), squeeze=False)
    for row, (model, threads) in enumerate(groups):
        ax_tps, ax_ttft = axes[row]
        in_group = [r for r in plotted if r["model"] == model and r.get("torch_threads") == threads]
        for label in series:
            points = sorted(
                (r["concurrency"], r["tokens_per_s"], r.get("ttft_p50_ms"), r.get("scenario"))
                for r in in_group
                if _label(r) == label
            )
            if not points:
                continue
            xs = [p[0] for p in points]
            bare = str(points[0][3]).startswith("bare")
            style = "-o" if not bare else "--."
            color = f"C{series.index(label) % 10}"  # the same colour in both panels
            ax_tps.plot(xs, [p[1] for p in points], style, label=label, color=color)
            ttft = [(p[0], p[2]) for p in points if p[2] is not None]
            if ttft and points[0][3] != "bare_generate_batched":  # its TTFT is the whole run
                ax_ttft.plot(
                    [t[0] for t in ttft], [t[1] for t in ttft], style, label=label, color=color
                )
        cs = sorted({r["concurrency"] for r in in_group})
        for ax, title in ((ax_tps, "aggregate tokens/s"), (ax_ttft, "TTFT p50 (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(cs, [str(c) for c in cs])
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel("concurrent streams C")
            ax.set_title(f"{model}, {threads} thread(s): {title}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        ax_tps.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _original_versions() -> str:
    marker = ORIGINAL_VENV / ".chatstream-original-ok"
    if not marker.exists():
        return "not installed"
    wanted = ("chatstream", "torch", "transformers", "fastapi", "fastsession", "uvicorn")
    pins = [line for line in marker.read_text().splitlines() if line.split("==")[0] in wanted]
    return ", ".join(pins)


def _transformers_serve_version() -> str:
    marker = peers.TRANSFORMERS_SERVE_VENV / ".chatstream-peer-ok"
    if not marker.exists():
        return "not installed"
    pins = [line for line in marker.read_text().splitlines() if line.startswith("transformers==")]
    return ", ".join(pins) or "installed"


def _cpu_flags() -> str:
    """The CPU's vector and matrix extensions that decide which kernels run."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")
                return " ".join(f for f in wanted if f in flags) or "no AVX2"
    return "unknown"


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_meta(args: argparse.Namespace) -> dict[str, Any]:
    gpu = None
    if args.device.startswith("cuda"):
        with contextlib.suppress(Exception):
            gpu = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                 "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            ).stdout.strip()  # fmt: skip
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    versions = (
        f"python {platform.python_version()}, torch {_version('torch')}, "
        f"transformers {_version('transformers')}, chatstream-anyio {_version('chatstream-anyio')}"
        f" (commit {commit or '?'}{', with local changes' if dirty else ''}), "
        f"starlette {_version('starlette')}, uvicorn {_version('uvicorn')}, "
        f"hypercorn {_version('hypercorn')}, httpx {_version('httpx')}; "
        f"original venv: {_original_versions()}; llama.cpp: {peers.llama_cpp_version()}; "
        f"transformers serve: {_transformers_serve_version()}"
    )
    machine = (
        f"{os.cpu_count()} CPUs ({_cpu_name()}; {_cpu_flags()}), "
        f"{platform.system()} {platform.release()}"
    )
    if gpu:
        machine += f", GPU: {gpu}"
    return {"machine": machine, "versions": versions}


def prepare_models(args: argparse.Namespace, env: dict[str, str]) -> list[tuple[str, str]]:
    """(name, folder) of every model to run; converts SmolLM2 / builds folders first."""

    def in_subprocess(code: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise RuntimeError(result.stderr[-2000:])
        return result.stdout.strip().splitlines()[-1]

    models: list[tuple[str, str]] = []
    if args.gpu:
        shape = "toy" if args.cpu_dry_run else "tinyllama-1.1b"
        folder = args.model_dir or str(Path(args.scratch) / f"random-{shape}")
        path = in_subprocess(
            "from pathlib import Path; from benchmarks.models import build_random_model_dir; "
            f"print(build_random_model_dir(Path({folder!r}), {shape!r}))"
        )
        models.append(
            (
                f"random {shape} ({args.dtype if args.dtype != 'auto' else 'bf16'})"
                if not args.cpu_dry_run
                else f"random {shape} (cpu dry run)",
                path,
            )
        )
        return models
    if not args.no_smollm2:
        log("preparing SmolLM2-135M-Instruct (converted once into the cache) ...")
        path = in_subprocess(
            "from benchmarks.models import ensure_smollm2; print(ensure_smollm2())"
        )
        models.append(("SmolLM2-135M-Instruct", path))
    if args.tiny:
        path = in_subprocess(
            "from pathlib import Path; from benchmarks.models import build_tiny_test_model; "
            f"print(build_tiny_test_model(Path({str(Path(args.scratch) / 'tiny')!r})))"
        )
        models.append((TINY, path))
    return models


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output folder (default benchmarks/results/<timestamp>)")
    parser.add_argument("--concurrency", help="comma list (default 1,2,8; GPU 1,8,32,128)")
    parser.add_argument("--with-32", action="store_true", help="add C=32 on the CPU")
    parser.add_argument("--tiny", action="store_true", help="add the tiny test model")
    parser.add_argument("--no-smollm2", action="store_true", help="skip SmolLM2")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (GPU 128)")
    parser.add_argument("--requests-per-worker", type=int, default=2)
    parser.add_argument(
        "--tiny-requests-per-worker",
        type=int,
        default=8,
        help="the tiny model's replies take milliseconds: more of them per worker",
    )
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--loop", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument(
        "--threads", default="1", help="comma list of compute threads per server (default 1)"
    )
    parser.add_argument("--torch-threads", type=int, help="one thread count (as --threads N)")
    parser.add_argument(
        "--quantize",
        help="comma list of chatstream's --quantize values to run (default auto,none on the "
        "CPU: the default configuration and float32; none on a GPU)",
    )
    parser.add_argument(
        "--with-peers",
        action="store_true",
        help="also llama.cpp's server and transformers serve (built or installed by "
        "benchmarks/setup_peers.sh if missing), and chatstream's OpenAI route",
    )
    original = parser.add_mutually_exclusive_group()
    original.add_argument(
        "--with-original", action="store_true", help="install the original's venv if missing"
    )
    original.add_argument("--no-original", action="store_true")
    parser.add_argument("--no-bare", action="store_true")
    parser.add_argument("--no-chatstream", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="the GPU scenarios (see gpu.sh)")
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="the GPU path at toy size on the CPU"
    )
    parser.add_argument("--model-dir", help="GPU: a prepared random-init model folder")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting scenarios")
    parser.add_argument("--scratch", default=None, help="where model folders are built")
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        args.gpu = True
    args.device = "cpu" if (not args.gpu or args.cpu_dry_run) else "cuda"
    args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.gpu:
        default_c = "1,2" if args.cpu_dry_run else "1,8,32,128"
        args.max_new_tokens = args.max_new_tokens or (8 if args.cpu_dry_run else 128)
        args.bare_scenarios = "batch1,interleaved,generate,step,limit"
        args.bare_deadline = 3.0 if args.cpu_dry_run else 10.0
        args.copy_bytes = (64 if args.cpu_dry_run else 2048) * 2**20
        args.no_original = True  # on GPU the original-style loop is bare "interleaved"
        if args.budget_s is None:
            args.budget_s = 420.0
    else:
        default_c = "1,2,8,32" if args.with_32 else "1,2,8"
        args.max_new_tokens = args.max_new_tokens or 64
        args.bare_scenarios = "batch1,generate,step"
        args.bare_deadline = None
        args.copy_bytes = 256 * 2**20
    args.concurrencies = [int(c) for c in (args.concurrency or default_c).split(",")]
    args.threads = (
        [args.torch_threads]
        if args.torch_threads
        else [int(t) for t in str(args.threads).split(",")]
    )
    args.torch_threads = ",".join(str(t) for t in args.threads)
    args.quantize = (args.quantize or ("none" if args.gpu else "auto,none")).split(",")
    if args.with_peers and args.gpu:
        parser.error("--with-peers compares CPU servers; it has no GPU scenario")
    args.scratch = args.scratch or os.environ.get("BENCH_SCRATCH") or "/tmp/chatstream-bench"
    return args


def run_gpu(runner: Runner, args: argparse.Namespace, models: list[tuple[str, str]]) -> None:
    """The GPU scenarios: chatstream with CUDA graphs at every C, the bare loops, then
    chatstream eager at every C (what the time budget cuts first)."""
    runner.threads = args.threads[0]
    for model, folder in models:
        if not args.no_chatstream:
            for c in args.concurrencies:
                runner.chatstream(model, folder, c, args.quantize[0], graphs=True)
        if not args.no_bare:
            runner.bare(model, folder, args.concurrencies)
        if not args.no_chatstream:
            for c in args.concurrencies:
                runner.chatstream(model, folder, c, args.quantize[0], graphs=False)


def replot(folder: Path) -> None:
    """Rewrite table.md and plot.png of a finished run from its results.jsonl."""
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    meta = next(r for r in records if r.get("kind") == "meta")
    end: dict[str, Any] = next((r for r in records if r.get("kind") == "meta_end"), {})
    meta["load_avg_end"] = end.get("load_avg_end")
    write_table(records, meta, folder / "table.md")
    write_plot(records, folder / "plot.png")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--replot"]:
        replot(Path(argv[1]))
        return 0
    args = parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or HERE / "results" / stamp)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").unlink(missing_ok=True)
    os.environ.setdefault("CHATSTREAM_CACHE", str(Path(args.scratch) / "cache"))
    runner = Runner(args, out)
    env = runner.base_env()

    with_original = not args.no_original and not args.gpu
    if with_original and not (ORIGINAL_VENV / "bin" / "python").exists():
        if args.with_original:
            log("installing the original ChatStream (benchmarks/setup_original.sh) ...")
            subprocess.run([str(HERE / "setup_original.sh")], check=True)
        else:
            log("no original venv: run benchmarks/setup_original.sh or pass --with-original")
            with_original = False

    meta = {
        "kind": "meta",
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.run", *argv]),
        "device": args.device,
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": args.torch_threads,
        "loop": args.loop,
        "requests_per_worker": args.requests_per_worker,
        "min_requests": args.min_requests,
        "tiny_requests_per_worker": args.tiny_requests_per_worker,
        "concurrencies": args.concurrencies,
        "load_avg_start": list(os.getloadavg()),
        "with_original": with_original,
        "quantize": args.quantize,
        "with_peers": args.with_peers,
        **machine_meta(args),
    }
    runner.emit(meta)
    log(f"results go to {out}")

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    # A time limit (gpu.sh) sends SIGTERM: still write the table of what was measured.
    signal.signal(signal.SIGTERM, stop)
    if args.with_peers:
        log("the peers (benchmarks/setup_peers.sh; llama.cpp builds once, about 25 min) ...")
        peers.ensure_peers()
    try:
        models = prepare_models(args, env)
        if args.gpu:
            run_gpu(runner, args, models)
            models = []
        for threads in args.threads:
            runner.threads = threads
            for model, folder in models:
                embedded = model == "SmolLM2-135M-Instruct"
                for c in args.concurrencies:
                    if not args.no_chatstream:
                        for quantize in args.quantize:
                            runner.chatstream(model, folder, c, quantize)
                        if args.with_peers:
                            runner.chatstream(model, folder, c, args.quantize[0], route="openai")
                    if with_original:
                        runner.original(model, folder, c)
                    if args.with_peers and embedded:
                        runner.llama_cpp(model, c)
                    if args.with_peers:
                        runner.transformers_serve(model, folder, c)
                if not args.no_bare:
                    runner.bare(model, folder, args.concurrencies)
    except SystemExit as stopped:
        log(str(stopped))
        runner.emit({"kind": "result", "error": str(stopped)})

    meta["load_avg_end"] = list(os.getloadavg())
    meta["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    runner.emit({"kind": "meta_end", "load_avg_end": meta["load_avg_end"],
                 "finished": meta["finished"]})  # fmt: skip
    table = write_table(runner.records, meta, out / "table.md")
    write_plot(runner.records, out / "plot.png")
    runner.logfile.close()
    print(table)
    log(f"wrote {out}/results.jsonl, table.md, plot.png")
    failed = [r for r in runner.records if r.get("kind") == "result" and r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
