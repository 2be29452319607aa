"""Admission over HTTP: exact counts of accepted and rejected streams, queue positions,
client disconnects at every stage, and the graceful drain."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import anyio
import httpx
import pytest

from chatstream.adapters.model import mock_texts

from .conftest import Server, ServerFactory
from .test_original_api import parse_sse

pytestmark = pytest.mark.anyio

SLOW = {"type": "echo", "time_per_token_sec": 0.03}
#: What the echo mock streams back: 30 words, about a second at the pace above.
WORDS = " ".join(f"w{i}" for i in range(30))
PROMOTED = {
    "user": {"apis": {"allow": "all", "auth_method": "nothing", "use_session": True}},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client side; the server runs both loops (see the loop fixture)


async def open_streams(server: Server, count: int, *, sse: bool) -> list[dict[str, Any]]:
    """Open ``count`` chat streams at once; each records its status and first event."""
    results: list[dict[str, Any]] = [{} for _ in range(count)]
    ready = anyio.Event()
    if True:  # each stream is its own browser: its own client and session

        async def one(index: int) -> None:
            headers = {"Accept": "text/event-stream"} if sse else {}
            async with (
                httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
                client.stream(
                    "POST", "/chat_stream", json={"user_input": WORDS}, headers=headers
                ) as response,
            ):
                results[index]["status"] = response.status_code
                results[index]["headers"] = response.headers
                chunks = []
                async for chunk in response.aiter_text():
                    chunks.append(chunk)
                    if len("".join(chunks)) > 0 and not results[index].get("first"):
                        results[index]["first"] = "".join(chunks)
                    await ready.wait()
                results[index]["body"] = "".join(chunks)

        async with anyio.create_task_group() as tg:
            for index in range(count):
                tg.start_soon(one, index)
                await anyio.sleep(0.05)  # a clear arrival order
            await anyio.sleep(0.3)
            ready.set()
    return results


@pytest.mark.parametrize("as_http_error", [True, False])
async def test_n_running_plus_m_waiting_are_accepted_and_the_rest_rejected(
    start_server: ServerFactory, as_http_error: bool
) -> None:
    server = start_server(
        options={
            "num_of_concurrent_executions": 2,
            "max_queue_size": 3,
            "too_many_request_as_http_error": as_http_error,
            "mock_params": SLOW,
        }
    )
    results = await open_streams(server, 8, sse=True)
    rejected = [r for r in results if "too_many_requests" in r.get("body", "")]
    accepted = [r for r in results if r not in rejected]
    assert len(accepted) == 5 and len(rejected) == 3
    for r in rejected:
        assert r["status"] == (429 if as_http_error else 200)
        assert json.loads(r["body"]) == {"error": "too_many_requests"}
        assert int(r["headers"]["retry-after"]) >= 1
    started_first = [r for r in accepted if r["first"].startswith("event: started")]
    queued_first = [r for r in accepted if r["first"].startswith("event: queued")]
    assert len(started_first) == 2 and len(queued_first) == 3
    for r in queued_first:
        events = parse_sse(r["body"])
        positions = [data["position"] for kind, data in events if kind == "queued"]
        assert positions == sorted(positions, reverse=True) and positions[-1] == 1
        kinds = [kind for kind, _ in events]
        assert kinds.index("started") == len(positions)
        assert kinds[-1] == "done"
    with server.client() as client:
        worker = client.get("/get_load").json()["chatstream_workers"][0]
        assert (worker["processing"], worker["waiting"]) == (0, 0)


async def test_keep_alive_comments_while_queued(start_server: ServerFactory) -> None:
    server = start_server(
        options={"num_of_concurrent_executions": 1, "max_queue_size": 1, "mock_params": SLOW},
        http={"keepalive_sec": 0.1},
    )
    results = await open_streams(server, 2, sse=True)
    # Arrival order is only likely, not certain, on a loaded machine: whichever came second waits.
    queued = [r for r in results if r["first"].startswith("event: queued")]
    assert len(queued) == 1
    assert ": keep-alive" in queued[0]["body"]


def load(server: Server) -> tuple[int, int]:
    with server.client() as client:
        worker = client.get("/get_load").json()["chatstream_workers"][0]
    return worker["processing"], worker["waiting"]


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def test_disconnect_while_queued_and_while_streaming_frees_the_slot(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        factory="tests.http.apps:original_style_app",
        options={
            "num_of_concurrent_executions": 1,
            "max_queue_size": 2,
            "mock_params": {"type": "long", "time_per_token_sec": 0.02},
            "client_roles": PROMOTED,
        },
    )
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as streaming:
        async with streaming.stream("POST", "/chat_stream", json={"user_input": "a"}) as response:
            # Read a few chunks and keep the stream open (a `break` would let the iterator
            # be finalized, closing the connection early).
            chunks: Any = response.aiter_text()
            received = ""
            while received.count("<::EOS::>") < 5:
                received += await anext(chunks)
            # Another client waits in the queue, then leaves before it ever streams.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as waiting:
                with anyio.move_on_after(0.3):
                    async with waiting.stream("POST", "/chat_stream", json={"user_input": "b"}):
                        await anyio.sleep(10)
            await anyio.to_thread.run_sync(lambda: wait_for(lambda: load(server) == (1, 0)))
            await chunks.aclose()
        # The streaming client left mid-reply.
        await anyio.to_thread.run_sync(lambda: wait_for(lambda: load(server) == (0, 0)))
        callbacks = (await streaming.get("/callbacks")).json()
        assert sorted(callbacks) == [
            "client_disconnected_before_streaming",
            "client_disconnected_while_streaming",
        ]
        # The partial reply stays in the history, as far as it was generated.
        prompt = (await streaming.get("/get_prompt")).json()["prompt_text"]
        partial = prompt.split("<bot>: ", 1)[1]
        assert partial and mock_texts.LONG_EN.startswith(partial.rstrip("\n"))
        assert len(partial) < len(mock_texts.LONG_EN)


def test_load_tells_a_balancer_free_slots_and_waiting_whatever_the_role(
    start_server: ServerFactory,
) -> None:
    # A role that may only chat, and a tight rate limit: /load answers anyway, as /health.
    roles = {
        "user": {"apis": {"allow": ["chat_stream"], "auth_method": "nothing", "use_session": True}}
    }
    server = start_server(
        options={
            "num_of_concurrent_executions": 1,
            "max_queue_size": 2,
            "mock_params": SLOW,
            "client_roles": roles,
        },
        http={"rate_limit_per_address": "5/minute"},
    )
    idle = {"accepting": True, "free_slots": 1, "running": 0, "capacity": 1, "waiting": 0}
    with server.client() as client:
        assert client.get("/get_load").status_code == 403
        assert client.get("/load").json() == {**idle, "max_waiting": 2}

        def chat() -> None:
            with server.client() as other:
                assert other.post("/chat_stream", json={"user_input": WORDS}).status_code == 200

        threads = [threading.Thread(target=chat) for _ in range(2)]
        for thread in threads:
            thread.start()
        wait_for(lambda: client.get("/load").json()["waiting"] == 1)
        busy = client.get("/load")
        assert busy.status_code == 200 and "set-cookie" not in busy.headers
        assert busy.json() == {
            **idle,
            "free_slots": 0,
            "running": 1,
            "waiting": 1,
            "max_waiting": 2,
        }
        for thread in threads:
            thread.join(30)
        assert client.get("/load").json()["free_slots"] == 1


def test_a_second_concurrent_turn_in_one_session_is_409_and_history_stays(
    start_server: ServerFactory,
) -> None:
    server = start_server(options={"mock_params": SLOW, "client_roles": PROMOTED})
    with server.client() as client:
        client.get("/get_load")
        client.post("/set_generation_params", json={})  # creates the session cookie
        done = threading.Event()

        def first_turn() -> None:
            with client.stream("POST", "/chat_stream", json={"user_input": WORDS}) as r:
                r.read()
            done.set()

        thread = threading.Thread(target=first_turn)
        thread.start()
        time.sleep(0.3)
        second = client.post("/chat_stream", json={"user_input": "second"})
        assert second.status_code == 409
        assert second.json()["error"] == "conversation_busy"
        thread.join(30)
        prompt = client.get("/get_prompt").json()["prompt_text"]
        assert prompt == f"<human>: {WORDS}\n<bot>: {WORDS}\n"


def test_drain_lets_running_streams_finish_and_refuses_new_ones(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        options={"mock_params": {"type": "round", "time_per_token_sec": 0.05}},
        drain_timeout=20,
    )
    with server.client() as client:
        client.get("/health")
        with client.stream(
            "POST",
            "/chat_stream",
            json={"user_input": "hi"},
            headers={"Accept": "text/event-stream"},
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("event: started")
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            # A new request on a fresh connection is refused one way or another.
            try:
                status = httpx.post(
                    f"{server.base_url}/chat_stream", json={"user_input": "late"}, timeout=5
                ).status_code
            except httpx.TransportError:
                status = None
            assert status in (None, 503)
            body = "\n".join(lines)
        assert "event: done" in body  # the running stream was not cut
    # A clean exit (uvicorn re-raises the signal once it has shut down, as is customary).
    assert server.process.wait(20) in (0, -signal.SIGTERM)
