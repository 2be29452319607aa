"""The original's HTTP protocol end to end, against a real server on both event loops."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from chatstream.adapters.http.streaming import EOS
from chatstream.adapters.model import mock_texts

from .conftest import ServerFactory

PROMOTED_ROLES = {
    "user": {
        "apis": {
            "allow": [
                "chat_stream",
                "clear_context",
                "set_feedback",
                "get_load",
                "webui_index",
                "webui_js",
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
            "enable_dev_tool": True,
        }
    },
    "agent": {"apis": {"allow": ["get_load"], "auth_method": "nothing", "use_session": False}},
    "monitor": {
        "apis": {
            "allow": ["get_load", "metrics", "get_resource_usage", "chat_stream"],
            "auth_method": "header_phrase",
            "header_phrase": "monitor-token-123",
            "use_session": False,
        }
    },
}


def chat(client: httpx.Client, body: dict[str, object]) -> tuple[httpx.Response, list[str]]:
    with client.stream("POST", "/chat_stream", json=body) as response:
        raw = response.read().decode()
    chunks = [c for c in raw.split(EOS) if c]
    return response, chunks


def test_multi_turn_with_the_session_cookie(start_server: ServerFactory) -> None:
    server = start_server()
    with server.client() as client:
        response, chunks = chat(client, {"user_input": "hello"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "chatstream_session" in response.headers["set-cookie"]
        assert "httponly" in response.headers["set-cookie"].lower()
        first_id = response.headers["x-chatstream-last-generated-message-id"]
        # Each chunk is the whole reply so far; the last is the whole reply.
        assert chunks[-1] == mock_texts.ROUND_EN[0]
        assert all(chunks[-1].startswith(c) for c in chunks)
        assert len(chunks) > 3
        # The second turn in the same session gets the second line: history is kept.
        _, chunks = chat(client, {"user_input": "and then?"})
        assert chunks[-1] == mock_texts.ROUND_EN[1]
        # Regenerate: a new id for the last reply; the old one still takes feedback.
        response, chunks = chat(client, {"user_input": None, "regenerate": True})
        assert chunks[-1] == mock_texts.ROUND_EN[1]
        regenerated_id = response.headers["x-chatstream-last-generated-message-id"]
        for message_id in (first_id, regenerated_id):
            feedback = client.post(
                "/set_feedback",
                json={"message_id": message_id, "is_like": True, "form_data": {"note": "ok"}},
            )
            assert feedback.json() == {"success": True, "message": "success"}
        cleared = client.post("/clear_context")
        assert cleared.json() == {"success": True, "message": "Context successfully cleared"}
        _, chunks = chat(client, {"user_input": "again"})
        assert chunks[-1] == mock_texts.ROUND_EN[0]  # a fresh conversation
        load = client.get("/get_load").json()
        assert load["chatstream_workers"][0]["processing"] == 0


def test_a_reply_a_stop_string_empties_still_ends_with_the_mark(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    opening = mock_texts.ROUND_EN[0][:5]
    with (
        server.client() as client,
        client.stream(
            "POST",
            "/chat_stream",
            json={"user_input": "hi", "generation_params": {"stop": [opening]}},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.read().decode() == EOS


def test_default_roles_let_the_ui_work_and_keep_dev_apis_closed(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    with server.client() as client:
        assert client.get("/").status_code == 200
        assert client.get("/").headers["content-type"].startswith("text/html")
        js = client.get("/chatstream.js")
        assert js.status_code == 200
        assert js.headers["content-type"].startswith("text/javascript")
        assert client.get("/get_load").status_code == 200  # a load balancer may read it
        for path in ("/get_prompt", "/get_resource_usage", "/metrics"):
            denied = client.get(path)
            assert denied.status_code == 403, path
            assert denied.json()["detail"] == "Denied on role layer."
        assert client.get("/health").json()["status"] == "ok"


def test_load_json_has_the_original_shape_with_the_real_waiting_room(
    start_server: ServerFactory,
) -> None:
    server = start_server(options={"num_of_concurrent_executions": 2, "max_queue_size": 3})
    with server.client() as client:
        (worker,) = client.get("/get_load").json()["chatstream_workers"]
    assert worker == {
        "name": "node:0",
        "processing": 0,
        "waiting": 0,
        "_num_of_next_queue": 0,
        "_num_of_request_queue": 0,
        "max_processing": 2,
        "max_waiting": 3,
    }


def test_generation_params_are_per_session_and_incremental(start_server: ServerFactory) -> None:
    server = start_server()
    with server.client() as client:
        params = client.get("/get_generation_params").json()["generation_params"]
        assert (params["temperature"], params["top_k_value"], params["top_p_value"]) == (
            1.0,
            50,
            1.0,
        )
        client.post("/set_generation_params", json={"temperature": 0.5})
        updated = client.post("/set_generation_params", json={"top_k_value": 7}).json()
        assert updated["generation_params"]["temperature"] == 0.5  # kept: incremental
        assert updated["generation_params"]["top_k_value"] == 7
        bad = client.post("/set_generation_params", json={"top_p_value": 1.5})
        assert bad.status_code == 400
        assert "top_p" in bad.json()["message"]
        unknown = client.post("/set_generation_params", json={"warmth": 1})
        assert unknown.status_code == 400
        assert "warmth" in unknown.json()["message"]
        after = client.get("/get_generation_params").json()["generation_params"]
        assert (after["temperature"], after["top_k_value"], after["top_p_value"]) == (0.5, 7, 1.0)
    with server.client() as other:  # another session starts from the defaults
        assert other.get("/get_generation_params").json()["generation_params"]["top_k_value"] == 50


def test_pass_phrase_promotion_and_agent_credentials(start_server: ServerFactory) -> None:
    server = start_server(options={"client_roles": PROMOTED_ROLES})
    with server.client() as client:
        assert client.get("/get_prompt").status_code == 403
        _, chunks = chat(client, {"user_input": "hello"})
        response, chunks = chat(client, {"user_input": "open sesame"})
        assert chunks == ["New role: 'developer' has been granted"]
        assert response.headers["x-chatstream-api-devtool-enabled"] == "enabled"
        prompt = client.get("/get_prompt").json()
        # The pass phrase never entered the history.
        assert prompt["prompt_text"] == f"<human>: hello\n<bot>: {mock_texts.ROUND_EN[0]}\n"
        assert client.get("/get_resource_usage").json()["memory_usage"][0]["num_gpus"] == 0
    with server.client() as agent:
        assert (
            agent.get("/metrics", headers={"X-ChatStream-Auth-Header": "wrong"}).status_code == 403
        )
        metrics = agent.get("/metrics", headers={"X-ChatStream-Auth-Header": "monitor-token-123"})
        assert metrics.status_code == 200
        assert "chatstream_requests_running" in metrics.text
        # A session-less client without a credential gets the agent default role.
        assert agent.get("/get_load").status_code == 200
        assert agent.post("/chat_stream", json={"user_input": "x"}).status_code in (200, 403)


def test_original_style_app_with_interception_and_finish_callback(
    start_server: ServerFactory,
) -> None:
    server = start_server(factory="tests.http.apps:original_style_app")
    with server.client() as client:
        _, chunks = chat(client, {"user_input": "hello"})
        assert chunks[-1] == mock_texts.ROUND_EN[0]
        _, chunks = chat(client, {"user_input": "next"})
        assert chunks[-1] == mock_texts.ROUND_EN[1]
        # The callback runs once the response has ended, which the client may see first.
        deadline = time.monotonic() + 10
        while len(client.get("/callbacks").json()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/callbacks").json() == ["success", "success"]
        assert client.get("/get_load").status_code == 200


def test_sse_stream_events_in_order(start_server: ServerFactory) -> None:
    server = start_server()
    with (
        server.client() as client,
        client.stream(
            "POST",
            "/chat_stream",
            json={"user_input": "hello"},
            headers={"Accept": "text/event-stream"},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.read().decode())
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"}
    assert (
        "".join(data["text"] for kind, data in events if kind == "delta")
        == (mock_texts.ROUND_EN[0])
    )
    done = events[-1][1]
    assert done["finish_reason"] == "stop"
    assert done["message_id"] == response.headers["x-chatstream-last-generated-message-id"]
    assert done["usage"]["completion_tokens"] > 0


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        kind = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = next((line[6:] for line in lines if line.startswith("data: ")), None)
        if kind is not None and data is not None:
            events.append((kind, json.loads(data)))
    return events


def test_history_for_a_reloaded_page(start_server: ServerFactory) -> None:
    server = start_server()
    with server.client() as client:
        assert client.get("/get_history").json()["messages"] == []  # no session yet
        response, _ = chat(client, {"user_input": "hello"})
        reply_id = response.headers["x-chatstream-last-generated-message-id"]
        client.post("/set_feedback", json={"message_id": reply_id, "is_like": False})
        messages = client.get("/get_history").json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "hello"),
        ("assistant", mock_texts.ROUND_EN[0]),
    ]
    assert messages[1]["id"] == reply_id
    assert messages[1]["status"] == "complete"
    assert messages[1]["feedback"] == {"is_like": False, "data": ""}
