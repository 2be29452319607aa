"""Hostile connections against a real server process on both loops: stalled or trickled
headers are closed, stalled or trickled bodies get a 408, a client leaving mid-body is no
traceback, and a flood of stalled connections at the descriptor limit neither floods the log
nor keeps ``/health`` down."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import Server, ServerFactory

TIMEOUTS = ["--header-timeout", "1"]
BODY_TIMEOUT = {"body_timeout_sec": 1}


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _seconds_until_closed(sock: socket.socket, trickle: bytes = b"") -> float:
    """Seconds until the server closes ``sock``, sending ``trickle`` a byte every 0.2 s."""
    start = time.monotonic()
    sock.settimeout(0.2)
    for byte in [trickle[i : i + 1] for i in range(len(trickle))] or [b""] * 100:
        with contextlib.suppress(TimeoutError):
            if byte:
                sock.sendall(byte)
            if sock.recv(1024) == b"":
                return time.monotonic() - start
    raise AssertionError("the connection stayed open")


def _response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes. A byte we trickled after it stopped
    reading makes its close a reset: what came before the reset is the response."""
    sock.settimeout(10)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n"],
    ids=["nothing", "half the headers"],
)
def test_stalled_headers_are_closed(start_server: ServerFactory, sent: bytes) -> None:
    server = start_server(server_args=TIMEOUTS)
    with _connect(server) as sock:
        sock.sendall(sent)
        assert _seconds_until_closed(sock) < 5


def test_trickled_headers_are_closed(start_server: ServerFactory) -> None:
    server = start_server(server_args=TIMEOUTS)
    headers = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    with _connect(server) as sock:
        assert _seconds_until_closed(sock, trickle=headers) < 5


def test_headers_after_a_response_have_the_deadline_too(start_server: ServerFactory) -> None:
    server = start_server(server_args=TIMEOUTS)
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request stalls
        assert _seconds_until_closed(sock, trickle=b"Host: " + b"x" * 100) < 5


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
def test_a_slow_body_gets_a_408_and_the_connection_closed(
    start_server: ServerFactory, trickle: bool
) -> None:
    server = start_server(server_args=TIMEOUTS, http=BODY_TIMEOUT)
    body = b'{"user_input": "' + b"a" * 100 + b'"}'
    head = (
        b"POST /chat_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with _connect(server) as sock:
        sock.sendall(head + body[:10])
        start = time.monotonic()
        if trickle:
            sock.settimeout(0.2)
            for i in range(10, len(body) - 1):
                try:
                    sock.sendall(body[i : i + 1])
                    if sock.recv(65536, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    continue
        response = _response(sock)
        assert time.monotonic() - start < 5
    assert response.startswith(b"HTTP/1.1 408"), response
    assert b'"error":"body_timeout"' in response
    with server.client() as client:  # nothing leaked: the next request runs
        assert client.post("/chat_stream", json={"user_input": "hi"}).status_code == 200
        assert client.get("/health").json()["status"] == "ok"
    assert "Traceback" not in server.log_text()


def test_a_client_leaving_mid_body_is_no_traceback(start_server: ServerFactory) -> None:
    server = start_server(server_args=TIMEOUTS, http=BODY_TIMEOUT)
    for _ in range(5):
        with _connect(server) as sock:
            sock.sendall(
                b"POST /set_generation_params HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"temp'
            )
            time.sleep(0.1)
    with server.client() as client:
        assert client.get("/health").status_code == 200
    server.stop()
    log = server.log_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log


def _descriptor_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@contextlib.contextmanager
def _stalled_connections(server: Server, count: int) -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
            except OSError:
                continue  # the backlog is full: also a refusal
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def test_a_flood_of_stalled_connections_at_the_descriptor_limit(
    start_server: ServerFactory,
) -> None:
    limit = 256
    server = start_server(
        server_args=["--header-timeout", "3"],
        preexec_fn=lambda: _descriptor_limit(limit),
    )
    with _stalled_connections(server, limit + 50):
        time.sleep(0.5)
        statuses: list[int | str] = []
        for _ in range(3):  # /health answers, or at worst the server refuses fast
            try:
                statuses.append(httpx.get(f"{server.base_url}/health", timeout=5).status_code)
            except httpx.TransportError as error:
                statuses.append(type(error).__name__)
        if server.loop == "asyncio":  # the connection cap answers over the limit
            assert set(statuses) <= {200, 503}, statuses
        # Reaped by the header deadline: /health is up again.
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the stalled connections were never closed"
            time.sleep(0.2)
    assert server.log.stat().st_size < 64 * 1024, server.log_text()[-4000:]
