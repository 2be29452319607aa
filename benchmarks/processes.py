"""Server processes and helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import httpx

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["chatstream_command", "free_port", "load_average", "log", "server", "server_env"]


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


@contextlib.contextmanager
def server(
    name: str,
    command: Sequence[str],
    env: dict[str, str],
    port: int,
    logfile: TextIO,
    *,
    ready: str = "/bench/lag",
) -> Iterator[str]:
    """Start a server process, wait until ``ready`` answers 200, stop it with SIGTERM."""
    logfile.write(f"\n===== {name}: {' '.join(command)}\n")
    logfile.flush()
    process = subprocess.Popen(
        list(command), cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} (see servers.log)")
            try:
                if httpx.get(url + ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 600:
                raise RuntimeError(f"{name} did not start in 600 s")
            time.sleep(0.5)
        log(f"{name} is up after {time.monotonic() - started:.1f} s")
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        logfile.flush()


def server_env() -> dict[str, str]:
    """This process's environment for a server process: offline, unbuffered, our sources."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def chatstream_command(port: int, loop: str = "asyncio") -> list[str]:
    """The command that serves the chatstream benchmark app on ``port``."""
    return [
        sys.executable, "-m", "chatstream.server",
        "--factory", "benchmarks.chatstream_app:app_factory",
        "--port", str(port), "--loop", loop, "--drain-timeout", "5",
    ]  # fmt: skip
