"""Resumable streams, at the HTTP level, on both loops: every event of a ``/chat_stream``
turn streamed as SSE carries an id; a reconnect with ``Last-Event-ID`` gets exactly the
events after it; a turn whose client vanished goes on for the grace period and is saved;
``POST /chat_stream/stop`` stops a turn; plain-text streams still stop when their client
leaves."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from tests.http.conftest import Server, ServerFactory

SSE = {"Accept": "text/event-stream"}
LONG = {"type": "long", "time_per_token_sec": 0.02}


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The events of an SSE body, as {"id", "event", "data"}; comments are skipped."""
    import json

    event: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "event" in event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(": ")
        event[field] = json.loads(value) if field == "data" else value


def index_of(event: dict[str, Any]) -> int:
    return int(event["id"].rsplit(".", 1)[1])


def turn_body(max_new_tokens: int) -> dict[str, Any]:
    return {"user_input": "a story", "generation_params": {"max_new_tokens": max_new_tokens}}


def read_until(stream: Iterator[dict[str, Any]], deltas: int) -> list[dict[str, Any]]:
    """Events up to and including the ``deltas``-th delta."""
    got: list[dict[str, Any]] = []
    for event in stream:
        got.append(event)
        if sum(e["event"] == "delta" for e in got) == deltas:
            return got
    raise AssertionError(f"the stream ended after {got}")


def resume(client: httpx.Client, last_event_id: str | None, **params: str) -> httpx.Response:
    headers = {**SSE, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    return client.get("/chat_stream", headers=headers, params=params)


def text_of(got: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["text"] for e in got if e["event"] == "delta")


def last_reply(client: httpx.Client) -> dict[str, Any]:
    reply: dict[str, Any] = client.get("/get_history").json()["messages"][-1]
    assert reply["role"] == "assistant"
    return reply


def running(server: Server) -> int:
    return int(httpx.get(f"{server.base_url}/load", timeout=10).json()["running"])


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_reconnect_with_last_event_id_gets_exactly_the_missing_events(
    start_server: ServerFactory,
) -> None:
    server = start_server(options={"mock_params": LONG})
    with server.client() as client:
        with client.stream("POST", "/chat_stream", json=turn_body(60), headers=SSE) as response:
            message_id = response.headers["x-chatstream-last-generated-message-id"]
            before = read_until(events(response.iter_lines()), 5)
        # Every event has an id: the message, then 0, 1, 2, ...
        assert [e["id"] for e in before] == [f"{message_id}.{i}" for i in range(len(before))]
        after_response = resume(client, before[-1]["id"])
        assert after_response.status_code == 200
        assert after_response.headers["content-type"].startswith("text/event-stream")
        after = list(events(iter(after_response.text.splitlines())))
        indexes = [index_of(e) for e in before + after]
        assert indexes == list(range(len(indexes)))  # no gap, no repeat
        assert after[-1]["event"] == "done"
        assert after[-1]["data"]["finish_reason"] == "length"
        # What a page shows under the reply: the queue, the first token, the speed.
        timings = after[-1]["data"]["timings"]
        assert 0 <= timings["queue_ms"] <= timings["ttft_ms"] and timings["tokens_per_s"] > 0
        reply = last_reply(client)
        assert reply["id"] == message_id and reply["status"] == "complete"
        assert text_of(before) + text_of(after) == reply["content"]
        # From the start (what an EventSource opening ?message_id= gets), once finished too.
        whole = resume(client, None, message_id=message_id)
        assert list(events(iter(whole.text.splitlines()))) == before + after
        # After the last event, nothing more: 204 (an EventSource stops reconnecting).
        assert resume(client, after[-1]["id"]).status_code == 204
        # The id may also come in the query, for clients that cannot set headers.
        query = client.get("/chat_stream", params={"last_event_id": before[-1]["id"]})
        assert list(events(iter(query.text.splitlines()))) == after


def test_a_turn_whose_client_left_goes_on_and_its_reply_is_saved(
    start_server: ServerFactory,
) -> None:
    server = start_server(options={"mock_params": LONG}, http={"resume_grace_sec": 30})
    with server.client() as client:
        with client.stream("POST", "/chat_stream", json=turn_body(40), headers=SSE) as response:
            message_id = response.headers["x-chatstream-last-generated-message-id"]
            read_until(events(response.iter_lines()), 1)
        # Nobody listens; the turn runs to its end all the same, and is saved whole.
        wait_for(lambda: last_reply(client)["status"] != "streaming")
        reply = last_reply(client)
        assert reply["id"] == message_id and reply["status"] == "complete"
        assert reply["finish_reason"] == "length"
        whole = list(events(iter(resume(client, None, message_id=message_id).text.splitlines())))
        assert text_of(whole) == reply["content"]
        assert sum(e["event"] == "delta" for e in whole) == 40


def test_with_no_reader_the_turn_is_cancelled_after_the_grace(
    start_server: ServerFactory,
) -> None:
    # A 200-token reply at 0.05 s a token would take 10 s; the grace is half a second.
    mock = {"type": "long", "time_per_token_sec": 0.05}
    server = start_server(options={"mock_params": mock}, http={"resume_grace_sec": 0.5})
    with server.client() as client:
        with client.stream("POST", "/chat_stream", json=turn_body(200), headers=SSE) as response:
            before = read_until(events(response.iter_lines()), 2)
        wait_for(lambda: running(server) == 0)
        reply = last_reply(client)
        assert reply["status"] == "cancelled"
        assert text_of(before) in reply["content"]
        # What a late reconnect gets: the rest of the events as far as they went, then the
        # end, marked cancelled.
        after = list(events(iter(resume(client, before[-1]["id"]).text.splitlines())))
        assert text_of(before) + text_of(after) == reply["content"]
        assert after[-1]["event"] == "done"
        assert after[-1]["data"]["finish_reason"] == "cancelled"


def test_a_grace_of_zero_cancels_at_once_as_before(start_server: ServerFactory) -> None:
    mock = {"type": "long", "time_per_token_sec": 0.05}
    server = start_server(options={"mock_params": mock}, http={"resume_grace_sec": 0})
    with server.client() as client:
        with client.stream("POST", "/chat_stream", json=turn_body(200), headers=SSE) as response:
            read_until(events(response.iter_lines()), 2)
        wait_for(lambda: running(server) == 0)
        assert last_reply(client)["status"] == "cancelled"


def test_a_reader_that_resumes_keeps_the_turn_alive_past_the_grace(
    start_server: ServerFactory,
) -> None:
    # 150 tokens at 0.02 s: 3 s, three times the grace.
    server = start_server(options={"mock_params": LONG}, http={"resume_grace_sec": 1})
    with server.client() as client:
        with client.stream("POST", "/chat_stream", json=turn_body(150), headers=SSE) as response:
            before = read_until(events(response.iter_lines()), 2)
        # Resumed twice, each time after a couple of events: each reader counts.
        middle_events = []
        with client.stream("GET", "/chat_stream", headers={"Last-Event-ID": before[-1]["id"]}) as r:
            middle_events = read_until(events(r.iter_lines()), 2)
        with client.stream(
            "GET", "/chat_stream", headers={"Last-Event-ID": middle_events[-1]["id"]}
        ) as r:
            after = list(events(r.iter_lines()))
        assert after[-1]["data"]["finish_reason"] == "length"
        got = before + middle_events + after
        assert [index_of(e) for e in got] == list(range(len(got)))
        assert text_of(got) == last_reply(client)["content"]


def test_resume_refusals_name_what_is_wrong_and_other_sessions_see_nothing(
    start_server: ServerFactory,
) -> None:
    server = start_server(options={"mock_params": LONG}, http={"resume_grace_sec": 30})
    with server.client() as client, server.client() as stranger:
        with client.stream("POST", "/chat_stream", json=turn_body(30), headers=SSE) as response:
            first = read_until(events(response.iter_lines()), 1)[-1]["id"]
        message_id = first.rsplit(".", 1)[0]
        # Another browser (another session) cannot read it, nor learn that it exists.
        refused = resume(stranger, first)
        assert refused.status_code == 404 and refused.json()["error"] == "stream_not_found"
        assert resume(stranger, None, message_id=message_id).status_code == 404
        stop = stranger.post("/chat_stream/stop", json={"message_id": message_id})
        assert stop.status_code == 404
        for bad in ("nonsense", f"{message_id}.x", f"{message_id}.-1", "."):
            answer = resume(client, bad)
            assert answer.status_code == 400, bad
            assert "Last-Event-ID" in answer.json()["message"]
        # An event that was never sent cannot have been received; a name that no stream
        # can have is no stream.
        beyond = resume(client, f"{message_id}.999")
        assert beyond.status_code == 400 and "does not have" in beyond.json()["message"]
        assert resume(client, None, message_id=f"{message_id}:readers").status_code == 404
        mismatch = resume(client, first, message_id="f" * 32)
        assert mismatch.status_code == 400 and "message_id" in mismatch.json()["message"]
        missing = client.get("/chat_stream", headers=SSE)
        assert missing.status_code == 400 and missing.json()["error"] == "missing_message_id"
        assert resume(client, f"{'0' * 32}.3").status_code == 404
        # Still the owner's, whole.
        wait_for(lambda: last_reply(client)["status"] == "complete")
        whole = list(events(iter(resume(client, None, message_id=message_id).text.splitlines())))
        assert text_of(whole) == last_reply(client)["content"]


def test_stop_ends_the_turn_the_stream_says_cancelled_and_the_slot_is_free(
    start_server: ServerFactory,
) -> None:
    mock = {"type": "long", "time_per_token_sec": 0.05}
    server = start_server(options={"mock_params": mock}, http={"resume_grace_sec": 30})
    with server.client() as client:
        with client.stream("POST", "/chat_stream", json=turn_body(200), headers=SSE) as response:
            message_id = response.headers["x-chatstream-last-generated-message-id"]
            stream = events(response.iter_lines())
            before = read_until(stream, 2)
            stop = client.post("/chat_stream/stop", json={"message_id": message_id})
            assert stop.status_code == 200 and stop.json()["stopped"] is True
            rest = list(stream)
        assert rest[-1]["event"] == "done"
        assert rest[-1]["data"]["finish_reason"] == "cancelled"
        assert rest[-1]["data"]["usage"]["completion_tokens"] >= 2
        reply = last_reply(client)
        assert reply["status"] == "cancelled"
        assert reply["content"] == text_of(before + rest)
        assert running(server) == 0
        again = client.post("/chat_stream/stop", json={"message_id": message_id})
        assert again.status_code == 200 and again.json()["stopped"] is False
        # The conversation is free for its next turn at once.
        assert client.post("/chat_stream", json=turn_body(3)).status_code == 200
        for body in ({}, {"message_id": 5}, {"message_id": ""}):
            bad = client.post("/chat_stream/stop", json=body)
            assert bad.status_code == 400 and "message_id" in bad.json()["message"]


def test_a_plain_text_stream_still_stops_when_its_client_leaves(
    start_server: ServerFactory,
) -> None:
    # Only SSE can be resumed: the original format cancels at once, whatever the grace.
    mock = {"type": "long", "time_per_token_sec": 0.05}
    server = start_server(options={"mock_params": mock}, http={"resume_grace_sec": 60})
    with server.client() as client:
        with client.stream("POST", "/chat_stream", json=turn_body(200)) as response:
            chunks = response.iter_text()
            received = ""
            while received.count("<::EOS::>") < 2:
                received += next(chunks)
        wait_for(lambda: running(server) == 0)
        assert last_reply(client)["status"] == "cancelled"
