"""A real server process per test, under uvicorn (asyncio) or hypercorn (trio)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

ROOT = pathlib.Path(__file__).parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(
        self, process: subprocess.Popen[bytes], base_url: str, loop: str, log: pathlib.Path
    ) -> None:
        self.process = process
        self.base_url = base_url
        self.loop = loop
        #: What the process wrote to stderr (its log).
        self.log = log

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30, **kwargs)


ServerFactory = Callable[..., Server]


def launch_server(
    *,
    factory: str,
    loop: str,
    env: dict[str, str],
    drain_timeout: float = 10.0,
    health_path: str = "/health",
    server_args: Sequence[str] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> Server:
    """``python -m chatstream.server`` serving ``factory`` on a free port, with ``env`` added
    to the environment and ``server_args`` to its command line; returns once ``health_path``
    answers. Its stderr goes to a file (``Server.log``)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "chatstream.server",
        "--factory",
        factory,
        "--loop",
        loop,
        "--port",
        str(port),
        "--drain-timeout",
        str(drain_timeout),
        *server_args,
    ]
    log = pathlib.Path(tempfile.mkstemp(prefix="chatstream-server-", suffix=".log")[1])
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            # The tests' package, and the sources of this checkout (not only an installed copy).
            env={
                **os.environ,
                **env,
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
            },
            cwd=ROOT,
            stderr=stderr,
            preexec_fn=preexec_fn,
        )
    server = Server(process, f"http://127.0.0.1:{port}", loop, log)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{server.base_url}{health_path}", timeout=1).status_code in (200, 403):
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("the server did not start")
        time.sleep(0.05)


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, with no automatic persistence: a
    test saves with ``SAVE`` before it stops the server, and a restart on the same port and
    folder reads that back."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def process_save(self) -> None:
        """Write what it holds to disk (``SAVE``), for the next start to read."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"SAVE\r\n")
            assert sock.recv(64).startswith(b"+OK")

    def stop(self) -> None:
        """Kill it at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    """A real Redis of the test's own (skipped where Debian's redis-server is missing)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["asyncio", "trio"])
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start_server(loop: str) -> Iterator[ServerFactory]:
    servers: list[Server] = []

    def start(
        factory: str = "tests.http.apps:mock_app",
        options: dict[str, Any] | None = None,
        http: dict[str, Any] | None = None,
        app: dict[str, Any] | None = None,
        drain_timeout: float = 10.0,
        server_args: Sequence[str] = (),
        preexec_fn: Callable[[], None] | None = None,
    ) -> Server:
        env = {
            "CHATSTREAM_TEST_OPTIONS": json.dumps(options or {}),
            "CHATSTREAM_TEST_HTTP": json.dumps(http or {}),
            "CHATSTREAM_TEST_APP": json.dumps(app or {}),
        }
        server = launch_server(
            factory=factory,
            loop=loop,
            env=env,
            drain_timeout=drain_timeout,
            server_args=server_args,
            preexec_fn=preexec_fn,
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        server.log.unlink(missing_ok=True)
