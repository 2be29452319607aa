"""Shutdown of a real server process on both loops: SIGINT and SIGTERM exit 0 with no
traceback, the drain answers 503 while the socket stays open, and a stream cut at the drain
deadline ends with its format's final event."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from .conftest import Server, ServerFactory

LONG = {"mock_params": {"type": "long", "time_per_token_sec": 0.05}}


def _wait_for_running(server: Server, count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        load = httpx.get(f"{server.base_url}/get_load", timeout=5).json()
        if load["chatstream_workers"][0]["processing"] >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the stream never started")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_exits_0_without_a_traceback(start_server: ServerFactory, sig: int) -> None:
    server = start_server()
    with server.client() as client:
        assert client.post("/chat_stream", json={"user_input": "hi"}).status_code == 200
    server.process.send_signal(sig)
    assert server.process.wait(20) == 0
    log = server.log_text()
    assert "Traceback" not in log, log


def test_while_draining_new_requests_get_503_on_an_open_socket(
    start_server: ServerFactory,
) -> None:
    server = start_server(options=LONG, drain_timeout=30)
    body: list[str] = []

    def stream() -> None:
        with server.client() as client:
            response = client.post("/chat_stream", json={"user_input": "hi"})
            body.append(response.text)

    running = threading.Thread(target=stream)
    running.start()
    _wait_for_running(server)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # A fresh connection is accepted and told to come back, with the reason.
    late = httpx.post(f"{server.base_url}/chat_stream", json={"user_input": "late"}, timeout=5)
    assert late.status_code == 503
    assert late.json()["error"] == "draining" and int(late.headers["retry-after"]) > 0
    openai = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "late"}]},
        timeout=5,
    )
    assert openai.status_code == 503 and int(openai.headers["retry-after"]) > 0
    health = httpx.get(f"{server.base_url}/health", timeout=5)
    assert (health.status_code, health.json()["status"]) == (503, "draining")
    load = httpx.get(f"{server.base_url}/load", timeout=5)
    assert load.status_code == 200 and load.json()["accepting"] is False
    running.join(30)
    assert body and body[0].endswith("<::EOS::>") and "<::ERROR::>" not in body[0]
    assert server.process.wait(20) == 0


def _sse(client: httpx.Client) -> str:
    headers = {"Accept": "text/event-stream"}
    return client.post("/chat_stream", json={"user_input": "hi"}, headers=headers).text


def _original(client: httpx.Client) -> str:
    return client.post("/chat_stream", json={"user_input": "hi"}).text


def _openai(client: httpx.Client) -> str:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    return client.post("/v1/chat/completions", json=body).text


def _last_sse_event(text: str) -> tuple[str, dict[str, object]]:
    blocks = [b for b in text.strip().split("\n\n") if b.startswith("event:")]
    name_line, data_line = blocks[-1].split("\n")[:2]
    return name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))


@pytest.mark.parametrize("fmt", [_sse, _original, _openai], ids=["sse", "original", "openai"])
def test_a_stream_cut_at_the_drain_deadline_ends_with_its_final_event(
    start_server: ServerFactory, fmt: Callable[[httpx.Client], str]
) -> None:
    server = start_server(options=LONG, drain_timeout=1)
    bodies: list[str] = []

    def stream() -> None:
        with server.client() as client:
            # httpx raises on a chunked body that is never terminated.
            bodies.append(fmt(client))

    running = threading.Thread(target=stream)
    running.start()
    _wait_for_running(server)
    server.process.send_signal(signal.SIGINT)
    running.join(30)
    assert server.process.wait(20) == 0
    (body,) = bodies
    if fmt is _sse:
        assert _last_sse_event(body) == (
            "error",
            {"message": "the server is shutting down", "reason": "shutdown"},
        )
    elif fmt is _original:
        assert body.endswith("<::ERROR::>the server is shutting down<::EOS::>")
    else:
        *_, error, done = [line for line in body.split("\n") if line.startswith("data: ")]
        assert done == "data: [DONE]"
        assert json.loads(error.removeprefix("data: "))["error"]["code"] == "shutdown"
    log = server.log_text()
    assert "Traceback" not in log and "1 requests cut" in log, log


def test_a_second_sigint_stops_at_once(start_server: ServerFactory) -> None:
    server = start_server(options=LONG, drain_timeout=60)
    outcome: list[str] = []

    def stream() -> None:
        try:
            with server.client() as client:
                outcome.append(_original(client))
        except httpx.TransportError as error:
            outcome.append(type(error).__name__)

    running = threading.Thread(target=stream)
    running.start()
    _wait_for_running(server)
    server.process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert server.process.poll() is None  # draining: the stream may take its 60 s
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(15) == 0
    running.join(15)
    assert outcome and not outcome[0].endswith("<::EOS::>")  # cut, not finished
