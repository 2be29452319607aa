"""Sessions in a real Redis (Debian's redis-server on a free loopback port, never a fake):
the store itself on both event loops, then two server processes sharing one Redis: a
conversation that continues on the other node, one turn at a time across nodes, and a Redis
outage (503 with Retry-After, then recovery with the history intact)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis

from chatstream.adapters.http.redis_store import RedisStore
from chatstream.adapters.http.redis_streams import RedisStreamMirror
from chatstream.adapters.http.session_stores import SessionData, StoreUnavailable
from chatstream.core import ConfigError, Conversation
from tests.http.conftest import RedisServer, Server, ServerFactory
from tests.http.test_resumable_streams import SSE, events, index_of, read_until, text_of


def resume(http: httpx.Client, node: Server, last_event_id: str) -> httpx.Response:
    headers = {**SSE, "Last-Event-ID": last_event_id}
    return http.get(f"{node.base_url}/chat_stream", headers=headers)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis(port=redis_server.port) as client:
        yield client


def conversation(turns: int) -> Conversation:
    conv = Conversation()
    for i in range(turns):
        conv.start_turn(f"question {i}", user_message_id=f"u{i}", reply_id=f"r{i}")
        conv.append_reply(f"answer {i}")
        conv.finish_reply("stop")
    return conv


# ---------------------------------------------------------------------- the store


@pytest.mark.anyio
async def test_sessions_round_trip_as_versioned_json_with_an_expiry(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    store = RedisStore(redis_server.url, ttl_seconds=600, new_session_ttl_seconds=60)
    data = SessionData(conversation(2), {"temperature": 0.2}, "developer")
    data.conversation.set_feedback("r1", is_like=True, data={"why": "ok"})
    await store.save("a", data)
    loaded = await store.load("a")
    assert loaded is not None and loaded.to_json() == data.to_json()
    assert loaded is not data
    assert json.loads(client.get("chatstream:session:a") or b"")["version"] == 2
    assert 590 <= client.ttl("chatstream:session:a") <= 600
    # No reply yet: a shorter life, so that a flood of new sessions leaves little behind.
    await store.save("b", SessionData(generation_params={"top_k": 3}))
    assert 50 <= client.ttl("chatstream:session:b") <= 60
    await store.delete("a")
    assert await store.load("a") is None
    assert await store.load("never") is None
    await store.delete("never")


@pytest.mark.anyio
async def test_saves_bound_the_history_and_unreadable_keys_are_no_session(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    store = RedisStore(redis_server.url, max_history_messages=4)
    await store.save("a", SessionData(conversation(5)))
    loaded = await store.load("a")
    assert loaded is not None
    assert [m.id for m in loaded.conversation.messages] == ["u3", "r3", "u4", "r4"]
    client.set("chatstream:session:x", b'{"version": 99}')
    client.set("chatstream:session:y", b"not json")
    assert await store.load("x") is None
    assert await store.load("y") is None
    with pytest.raises(ConfigError):
        RedisStore(redis_server.url, lock_ttl_seconds=0)
    with pytest.raises(ConfigError):
        RedisStore(redis_server.url, max_history_messages=0)
    with pytest.raises(ConfigError):
        RedisStore("http://example.com")


@pytest.mark.anyio
async def test_the_turn_lock_is_taken_once_and_freed_only_by_its_holder(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    lock = RedisStore(redis_server.url, lock_ttl_seconds=30).turn_lock
    token = await lock.acquire("s")
    assert token is not None
    assert await lock.acquire("s") is None
    assert 25_000 < client.pttl("chatstream:turn:s") <= 30_000
    client.pexpire("chatstream:turn:s", 5_000)
    assert await lock.renew("s", token)
    assert client.pttl("chatstream:turn:s") > 25_000
    await lock.release("s", "not the token")
    assert not await lock.renew("s", "not the token")
    assert await lock.acquire("s") is None
    await lock.release("s", token)
    assert client.exists("chatstream:turn:s") == 0
    # An expired lock passes to the next holder, and the old one cannot free it.
    other = await lock.acquire("s")
    assert other is not None
    await lock.release("s", token)
    assert not await lock.renew("s", token)
    assert client.get("chatstream:turn:s") == other.encode()


@pytest.mark.anyio
async def test_an_outage_raises_store_unavailable_and_the_store_recovers(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url, retry_after=3)
    await store.save("a", SessionData(conversation(1)))
    redis_server.process_save()
    redis_server.stop()
    for call in (store.load("a"), store.save("a", SessionData()), store.turn_lock.acquire("a")):
        with pytest.raises(StoreUnavailable) as caught:
            await call
        assert caught.value.retry_after == 3
    assert not await store.ping()
    redis_server.start()
    assert await store.ping()
    loaded = await store.load("a")  # a pooled connection died with the old server
    assert loaded is not None and [m.id for m in loaded.conversation.messages] == ["u0", "r0"]


# ---------------------------------------------------------------------- two nodes


def start_nodes(
    start_server: ServerFactory,
    redis_server: RedisServer,
    *,
    options: dict[str, object] | None = None,
    redis_options: dict[str, object] | None = None,
    http: dict[str, object] | None = None,
) -> tuple[Server, Server]:
    app = {"redis_url": redis_server.url, "redis_options": redis_options or {}}
    return tuple(  # type: ignore[return-value]
        start_server(factory="tests.http.apps:redis_app", options=options, app=app, http=http)
        for _ in range(2)
    )


ROLES = {
    "user": {
        "apis": {
            "allow": [
                "chat_stream",
                "clear_context",
                "set_feedback",
                "get_history",
                "get_generation_params",
                "set_generation_params",
            ],
            "auth_method": "nothing",
            "use_session": True,
        }
    },
    "developer": {
        "apis": {
            "allow": "all",
            "auth_method": "ui_pass_phrase",
            "ui_pass_phrase": "open sesame",
            "use_session": True,
        }
    },
}


def chat(http: httpx.Client, node: Server, text: str) -> httpx.Response:
    response = http.post(f"{node.base_url}/chat_stream", json={"user_input": text})
    response.read()
    return response


def test_a_conversation_continues_on_the_other_node(
    start_server: ServerFactory, redis_server: RedisServer
) -> None:
    a, b = start_nodes(start_server, redis_server, options={"client_roles": ROLES})
    # One cookie jar for both nodes (cookies are per host, not per port): one browser.
    with httpx.Client(timeout=30) as http:
        first = chat(http, a, "hello")
        assert first.status_code == 200
        reply_id = first.headers["x-chatstream-last-generated-message-id"]
        params = http.post(f"{b.base_url}/set_generation_params", json={"temperature": 0.3})
        assert params.json()["success"]
        feedback = {"message_id": reply_id, "is_like": True, "form_data": {"note": "good"}}
        assert http.post(f"{a.base_url}/set_feedback", json=feedback).json()["success"]
        assert chat(http, b, "open sesame").text.startswith("New role: 'developer'")
        assert chat(http, b, "and then?").status_code == 200
        # The role granted on b opens a's prompt; a sees b's turn, params and a's feedback.
        prompt = http.get(f"{a.base_url}/get_prompt").json()["prompt_text"]
        assert "hello" in prompt and "and then?" in prompt
        got = http.get(f"{a.base_url}/get_generation_params").json()["generation_params"]
        assert got["temperature"] == 0.3
        messages = http.get(f"{a.base_url}/get_history").json()["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[1]["id"] == reply_id
        assert messages[1]["feedback"]["data"] == {"note": "good"}
        # Cleared on one node, cleared for both.
        assert http.post(f"{b.base_url}/clear_context").json()["success"]
        assert http.get(f"{a.base_url}/get_history").json()["messages"] == []


def test_an_app_built_the_original_way_shares_the_store(
    start_server: ServerFactory, redis_server: RedisServer
) -> None:
    # ChatStream.append_middlewares(app, {"fast_session": {..., "store": RedisStore(...)}})
    # beside a create_app node: one conversation across both.
    app = {"redis_url": redis_server.url}
    original = start_server(factory="tests.http.apps:original_style_app", app=app)
    made = start_server(factory="tests.http.apps:redis_app", app=app)
    with httpx.Client(timeout=30) as http:
        assert chat(http, original, "hello").status_code == 200
        assert chat(http, made, "and on").status_code == 200
        messages = http.get(f"{original.base_url}/get_history").json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["hello", "and on"]


def test_one_turn_at_a_time_across_nodes(
    start_server: ServerFactory, redis_server: RedisServer, client: redis.Redis
) -> None:
    # Long replies, and a lock that expires well before the reply ends: only its renewal
    # keeps the second node out.
    a, b = start_nodes(
        start_server,
        redis_server,
        options={"mock_params": {"type": "long", "time_per_token_sec": 0.02}},
        redis_options={"lock_ttl_seconds": 0.6},
    )
    with httpx.Client(timeout=30) as http:
        assert chat(http, a, "hello").status_code == 200
        statuses: dict[str, int] = {}
        with http.stream("POST", f"{a.base_url}/chat_stream", json={"user_input": "more"}) as r:
            stream = r.iter_bytes()
            next(stream)  # the turn runs on a
            for i in range(3):
                other = chat(http, b, f"meanwhile {i}")
                statuses[f"b{i}"] = other.status_code
                assert other.json()["error"] == "conversation_busy"
                busy_clear = http.post(f"{b.base_url}/clear_context")
                assert busy_clear.status_code == 409
                threading.Event().wait(0.5)  # past the lock's first expiry
            assert r.status_code == 200
            for _ in stream:
                pass
        assert set(statuses.values()) == {409}
        assert client.keys("chatstream:turn:*") == []  # released when the turn ended
        assert chat(http, b, "now").status_code == 200
        messages = http.get(f"{a.base_url}/get_history").json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == [
            "hello",
            "more",
            "now",
        ]
        # A client that leaves mid-reply frees the conversation too.
        with http.stream("POST", f"{b.base_url}/chat_stream", json={"user_input": "bye"}) as r:
            next(r.iter_bytes())
            assert client.keys("chatstream:turn:*") != []
        pause = threading.Event()
        for _ in range(100):
            if client.keys("chatstream:turn:*") == []:
                break
            pause.wait(0.05)
        assert client.keys("chatstream:turn:*") == []
        assert chat(http, a, "back").status_code == 200


def test_two_browsers_racing_on_two_nodes_get_exactly_one_409(
    start_server: ServerFactory, redis_server: RedisServer
) -> None:
    a, b = start_nodes(
        start_server,
        redis_server,
        options={"mock_params": {"type": "round", "time_per_token_sec": 0.1}},
    )
    with httpx.Client(timeout=30) as http:
        assert chat(http, a, "hello").status_code == 200
        statuses: list[int] = []
        barrier = threading.Barrier(2)

        def post(node: Server) -> None:
            barrier.wait()
            statuses.append(chat(http, node, f"on {node.port}").status_code)

        threads = [threading.Thread(target=post, args=(node,)) for node in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(statuses) == [200, 409]


def test_a_redis_outage_is_a_503_and_nothing_is_lost(
    start_server: ServerFactory, redis_server: RedisServer
) -> None:
    a, b = start_nodes(start_server, redis_server)
    with httpx.Client(timeout=30) as http:
        assert chat(http, a, "before").status_code == 200
        before = http.get(f"{b.base_url}/get_history").json()["messages"]
        assert len(before) == 2
        redis_server.process_save()
        redis_server.stop()
        for node in (a, b):
            answers = [
                chat(http, node, "during"),
                http.get(f"{node.base_url}/get_history"),
                http.post(f"{node.base_url}/set_generation_params", json={"top_k": 5}),
                http.post(f"{node.base_url}/clear_context"),
            ]
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "2"
                assert answer.json()["error"] == "session_store_unavailable"
            health = http.get(f"{node.base_url}/health")
            assert (health.status_code, health.json()["status"]) == (503, "degraded")
            # A browser's role is in its session, so with a cookie even /get_load needs the
            # store; without one, it still works.
            assert http.get(f"{node.base_url}/get_load").status_code == 503
            assert httpx.get(f"{node.base_url}/get_load").status_code == 200
        redis_server.start()
        for node in (a, b):
            assert http.get(f"{node.base_url}/health").status_code == 200
        assert http.get(f"{a.base_url}/get_history").json()["messages"] == before
        assert chat(http, b, "after").status_code == 200
        messages = http.get(f"{a.base_url}/get_history").json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["before", "after"]


def test_a_reply_that_ends_while_redis_restarts_is_saved_once_it_is_back(
    start_server: ServerFactory, redis_server: RedisServer
) -> None:
    # 30 words at 0.02 s: the reply ends while Redis is down, and waits to be saved.
    mock = {"type": "long", "time_per_token_sec": 0.02}
    a, b = start_nodes(start_server, redis_server, options={"mock_params": mock})
    body = {"user_input": "a story", "generation_params": {"max_new_tokens": 30}}
    with httpx.Client(timeout=30) as http:
        assert chat(http, a, "before").status_code == 200
        sse = {"Accept": "text/event-stream"}
        with http.stream("POST", f"{a.base_url}/chat_stream", json=body, headers=sse) as r:
            lines = r.iter_lines()
            while not next(lines).startswith("event: delta"):
                pass
            redis_server.process_save()
            redis_server.stop()
            time.sleep(1.5)
            redis_server.start()
            rest = "\n".join(lines)
        assert "event: done" in rest
        messages = http.get(f"{b.base_url}/get_history").json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["before", "a story"]
        assert messages[-1]["status"] == "complete" and messages[-1]["finish_reason"] == "length"
        # Saved, then its lock freed: the next turn, on the other node, goes at once.
        assert chat(http, b, "after").status_code == 200


def story_nodes(start_server: ServerFactory, redis_server: RedisServer) -> tuple[Server, Server]:
    """Two nodes telling the long story at 0.02 s a word; a turn whose client left waits 1 s."""
    mock = {"type": "long", "time_per_token_sec": 0.02}
    return start_nodes(
        start_server, redis_server, options={"mock_params": mock}, http={"resume_grace_sec": 1}
    )


def left_after(
    http: httpx.Client, node: Server, *, max_new_tokens: int, deltas: int
) -> tuple[str, list[dict[str, Any]]]:
    """Start a turn on ``node`` and leave after ``deltas`` deltas: its message id and the
    events received."""
    body = {"user_input": "a story", "generation_params": {"max_new_tokens": max_new_tokens}}
    with http.stream("POST", f"{node.base_url}/chat_stream", json=body, headers=SSE) as r:
        message_id = r.headers["x-chatstream-last-generated-message-id"]
        return message_id, read_until(events(r.iter_lines()), deltas)


def test_a_stream_run_by_one_node_resumes_through_the_other(
    start_server: ServerFactory, redis_server: RedisServer, client: redis.Redis
) -> None:
    # 150 words at 0.02 s: 3 s, three times the grace; only the reader on the other node
    # keeps the turn going once its client has left.
    a, b = story_nodes(start_server, redis_server)
    with httpx.Client(timeout=30) as http, httpx.Client(timeout=30) as stranger:
        message_id, before = left_after(http, a, max_new_tokens=150, deltas=3)
        resumed = resume(http, b, before[-1]["id"])
        assert resumed.status_code == 200
        after = list(events(iter(resumed.text.splitlines())))
        assert after[-1]["event"] == "done"
        assert after[-1]["data"]["finish_reason"] == "length"  # not cancelled
        got = before + after
        assert [index_of(e) for e in got] == list(range(len(got)))
        reply = http.get(f"{b.base_url}/get_history").json()["messages"][-1]
        assert (reply["id"], reply["status"]) == (message_id, "complete")
        assert text_of(got) == reply["content"]
        # Whole from the other node, then nothing more; another session sees nothing.
        whole = http.get(f"{b.base_url}/chat_stream", params={"message_id": message_id})
        assert list(events(iter(whole.text.splitlines()))) == got
        assert resume(http, b, got[-1]["id"]).status_code == 204
        assert resume(stranger, b, before[-1]["id"]).status_code == 404
        assert 0 < client.pttl(f"chatstream:events:{message_id}") <= 60_000


def test_a_cross_node_resume_rides_out_a_redis_stall(
    start_server: ServerFactory, redis_server: RedisServer, client: redis.Redis
) -> None:
    # Redis refuses writes for 2.5 s while node b follows a's turn for a client that left a:
    # the copy and the reader wait, the presence holds, and the reply goes on to its end.
    a, b = story_nodes(start_server, redis_server)
    with httpx.Client(timeout=30) as http:
        _, before = left_after(http, a, max_new_tokens=200, deltas=3)
        with http.stream(
            "GET", f"{b.base_url}/chat_stream", headers={**SSE, "Last-Event-ID": before[-1]["id"]}
        ) as resumed:
            stream = events(resumed.iter_lines())
            middle = read_until(stream, 2)
            client.client_pause(2500, all=False)  # CLIENT PAUSE 2500 WRITE
            after = list(stream)
        assert after[-1]["data"]["finish_reason"] == "length"
        got = before + middle + after
        assert [index_of(e) for e in got] == list(range(len(got)))
        reply = http.get(f"{b.base_url}/get_history").json()["messages"][-1]
        assert text_of(got) == reply["content"] and reply["status"] == "complete"


@pytest.mark.anyio
async def test_a_process_follows_at_most_max_followers_streams_from_the_mirror(
    redis_server: RedisServer,
) -> None:
    mirror = RedisStreamMirror(RedisStore(redis_server.url), max_followers=1)
    assert mirror.can_follow()
    following = mirror.follow("m" * 32, -1, keepalive=60)
    async with anyio.create_task_group() as tg:
        tg.start_soon(anext, following)
        await anyio.sleep(0.2)
        assert not mirror.can_follow()  # the one place is taken
        tg.cancel_scope.cancel()
    await following.aclose()
    assert mirror.can_follow()


def test_feedback_and_parameters_set_during_a_turn_on_another_node_are_kept(
    start_server: ServerFactory, redis_server: RedisServer
) -> None:
    mock = {"type": "long", "time_per_token_sec": 0.02}
    a, b = start_nodes(start_server, redis_server, options={"mock_params": mock})
    short = {"generation_params": {"max_new_tokens": 2}}
    with httpx.Client(timeout=30) as http:
        first = http.post(f"{a.base_url}/chat_stream", json={"user_input": "one", **short})
        first_id = first.headers["x-chatstream-last-generated-message-id"]
        body = {"user_input": "two", "generation_params": {"max_new_tokens": 100}}
        with http.stream("POST", f"{a.base_url}/chat_stream", json=body, headers=SSE) as r:
            stream = events(r.iter_lines())
            read_until(stream, 1)
            # While a's turn runs, b saves a like on the first reply and new parameters.
            like = {"message_id": first_id, "is_like": True, "form_data": "nice"}
            assert http.post(f"{b.base_url}/set_feedback", json=like).json()["success"]
            assert http.post(f"{b.base_url}/set_generation_params", json={"top_k": 7}).is_success
            assert list(stream)[-1]["event"] == "done"
        messages = http.get(f"{b.base_url}/get_history").json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["one", "two"]
        assert messages[1]["feedback"] == {"is_like": True, "data": "nice"}
        params = http.get(f"{a.base_url}/get_generation_params").json()["generation_params"]
        assert params["top_k_value"] == 7


def test_a_hung_redis_answers_503_instead_of_hanging(
    start_server: ServerFactory, redis_server: RedisServer
) -> None:
    # A stopped (not dead) Redis accepts connections and never answers: the socket timeouts
    # bound every call.
    (a, _) = start_nodes(
        start_server, redis_server, redis_options={"socket_timeout": 0.3, "connect_timeout": 0.3}
    )
    with httpx.Client(timeout=30) as http:
        assert chat(http, a, "before").status_code == 200
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            assert chat(http, a, "during").status_code == 503
            assert http.get(f"{a.base_url}/get_history").status_code == 503
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        messages = http.get(f"{a.base_url}/get_history").json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["before"]


def test_the_cli_takes_a_redis_session_store(redis_server: RedisServer) -> None:
    from chatstream.cli import _session_store

    store = _session_store(redis_server.url)
    assert isinstance(store, RedisStore)
    assert _session_store(None) is None
    with pytest.raises(SystemExit, match="redis://"):
        _session_store("memcached://x")
