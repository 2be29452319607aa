"""Several conversations per session and versions of messages, over HTTP: a real server on
both event loops, sessions in memory and (where Debian's redis-server is installed) in Redis,
where every request works on its own copy of the session."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from chatstream.adapters.http.session_stores import MAX_CONVERSATIONS
from chatstream.adapters.model import mock_texts

from .conftest import RedisServer, ServerFactory
from .test_bad_input import ALL_ROLES, error_of


def send(client: httpx.Client, text: str | None, **fields: Any) -> str:
    """One turn; the id of its reply."""
    body: dict[str, Any] = {"user_input": text, **fields}
    with client.stream("POST", "/chat_stream", json=body) as response:
        response.read()
    assert response.status_code == 200, response.text
    return str(response.headers["x-chatstream-last-generated-message-id"])


def history(client: httpx.Client, conversation_id: str | None = None) -> list[dict[str, Any]]:
    params = {} if conversation_id is None else {"conversation_id": conversation_id}
    response = client.get("/get_history", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["messages"])


def contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages]


def listing(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/conversations")
    assert response.status_code == 200
    return dict(response.json())


@pytest.fixture(params=["memory", "redis"])
def server_app(request: pytest.FixtureRequest) -> dict[str, Any]:
    """How the server keeps sessions: live objects, or JSON copies in a real Redis."""
    if request.param == "memory":
        return {"factory": "tests.http.apps:mock_app"}
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    return {"factory": "tests.http.apps:redis_app", "app": {"redis_url": redis_server.url}}


def test_edit_branches_and_versions_switch(
    start_server: ServerFactory, server_app: dict[str, Any]
) -> None:
    server = start_server(options={"client_roles": ALL_ROLES}, **server_app)
    with server.client() as client:
        send(client, "first")
        first_reply = send(client, "second")
        path = history(client)
        assert contents(path) == ["first", mock_texts.ROUND_EN[0], "second", mock_texts.ROUND_EN[1]]
        assert all(m["versions"] == [m["id"]] for m in path)
        second = path[2]["id"]

        # Edit the second question: a new version, answered, the old branch kept.
        edited_reply = send(client, "second, better", edit_message_id=second)
        path = history(client)
        assert contents(path)[:3] == ["first", mock_texts.ROUND_EN[0], "second, better"]
        assert path[3]["id"] == edited_reply
        assert path[2]["versions"] == [second, path[2]["id"]]
        # Regenerate the new reply: the reply has two versions now.
        regenerated = send(client, None, regenerate=True)
        path = history(client)
        assert path[3]["versions"] == [edited_reply, regenerated]

        # Back to the first version of the question: its own reply comes back.
        response = client.post("/switch_version", json={"message_id": second})
        assert response.status_code == 200, response.text
        switched = response.json()["messages"]
        assert [m["id"] for m in switched] == [path[0]["id"], path[1]["id"], second, first_reply]
        assert history(client) == switched
        # The prompt the model sees follows the path.
        prompt = client.get("/get_prompt").json()["prompt_text"]
        assert "second" in prompt and "second, better" not in prompt
        # The other version's newest reply comes back with it.
        response = client.post("/switch_version", json={"message_id": path[2]["id"]})
        assert [m["id"] for m in response.json()["messages"]][2:] == [path[2]["id"], regenerated]
        # Feedback on a version off the path.
        response = client.post("/set_feedback", json={"message_id": first_reply, "is_like": True})
        assert response.status_code == 200

        # Refusals name the field and change nothing.
        before = history(client)
        assert error_of(client.post("/switch_version", json={}))["error"] == "missing_message_id"
        response = client.post("/switch_version", json={"message_id": "nope"})
        assert response.status_code == 404
        assert error_of(response)["error"] == "unknown_message_id"
        response = client.post(
            "/chat_stream", json={"user_input": "x", "edit_message_id": first_reply}
        )
        assert response.status_code == 404
        assert error_of(response)["error"] == "unknown_message_id"
        response = client.post(
            "/chat_stream", json={"user_input": "x", "edit_message_id": 3, "regenerate": False}
        )
        assert error_of(response)["error"] == "invalid_field"
        assert "edit_message_id" in error_of(response)["message"]
        response = client.post(
            "/chat_stream",
            json={"user_input": None, "edit_message_id": second, "regenerate": True},
        )
        assert error_of(response)["error"] == "invalid_field"
        assert history(client) == before


def test_several_conversations(start_server: ServerFactory, server_app: dict[str, Any]) -> None:
    server = start_server(options={"client_roles": ALL_ROLES}, **server_app)
    with server.client() as client:
        assert listing(client) == {"success": True, "current": None, "conversations": []}
        send(client, "Plan a trip\nto Kyoto")
        first = listing(client)
        assert first["conversations"] == [
            {"id": "1", "title": "Plan a trip", "messages": 2, "system_prompt": None}
        ]

        response = client.post("/conversations", json={"system_prompt": "Answer in French."})
        assert response.status_code == 200, response.text
        created = response.json()["conversation"]
        assert created == {
            "id": "2",
            "title": "",
            "messages": 0,
            "system_prompt": "Answer in French.",
        }
        assert listing(client)["current"] == "2"
        # Calls without an id use the current conversation.
        assert history(client) == []
        send(client, "Bonjour")
        assert contents(history(client)) == ["Bonjour", mock_texts.ROUND_EN[0]]
        assert "Answer in French." in client.get("/get_prompt").json()["prompt_text"]
        assert contents(history(client, "1"))[0] == "Plan a trip\nto Kyoto"
        # Most recently used first.
        assert [c["id"] for c in listing(client)["conversations"]] == ["2", "1"]

        # A turn in another conversation by id makes it current and most recent.
        send(client, "and the temples?", conversation_id="1")
        assert listing(client)["current"] == "1"
        assert [c["id"] for c in listing(client)["conversations"]] == ["1", "2"]
        assert len(history(client, "1")) == 4 and len(history(client, "2")) == 2

        # Rename, select, the system prompt of one conversation only.
        response = client.patch("/conversations/2", json={"title": "  French  "})
        assert response.json()["conversation"]["title"] == "French"
        assert client.post("/conversations/2/select").json()["conversation"]["id"] == "2"
        assert listing(client)["current"] == "2"
        assert client.get("/get_history").json()["conversation_id"] == "2"
        prompt_one = client.get("/get_prompt", params={"conversation_id": "1"}).json()
        assert "Answer in French." not in prompt_one["prompt_text"]
        response = client.patch("/conversations/2", json={"title": None, "system_prompt": ""})
        assert response.json()["conversation"] == {
            "id": "2",
            "title": "Bonjour",
            "messages": 2,
            "system_prompt": None,
        }
        # Clear one conversation by id: the other keeps its history.
        assert client.post("/clear_context", json={"conversation_id": "2"}).json()["success"]
        assert history(client, "2") == [] and len(history(client, "1")) == 4

        # Delete the current one: the most recently used other one is current.
        response = client.delete("/conversations/2")
        assert response.json() == {"success": True, "current": "1"}
        assert [c["id"] for c in listing(client)["conversations"]] == ["1"]
        # Deleting the last leaves a new empty one; ids are never reused.
        assert client.delete("/conversations/1").json()["current"] == "3"
        assert listing(client)["conversations"] == [
            {"id": "3", "title": "", "messages": 0, "system_prompt": None}
        ]


def test_conversation_refusals_change_nothing(start_server: ServerFactory) -> None:
    server = start_server(options={"client_roles": ALL_ROLES}, http={"max_input_chars": 100})
    with server.client() as client:
        # No session yet: nothing to name.
        response = client.post("/chat_stream", json={"user_input": "x", "conversation_id": "1"})
        assert response.status_code == 404
        assert error_of(response)["error"] == "unknown_conversation"
        assert listing(client)["current"] is None
        send(client, "hello")
        before = (listing(client), history(client))
        refused: list[tuple[str, str, dict[str, Any] | None]] = [
            ("PATCH", "/conversations/9", {"title": "x"}),
            ("DELETE", "/conversations/9", None),
            ("POST", "/conversations/9/select", None),
            ("POST", "/chat_stream", {"user_input": "x", "conversation_id": "9"}),
            ("POST", "/set_feedback", {"message_id": "m", "conversation_id": "9"}),
            ("POST", "/clear_context", {"conversation_id": "9"}),
            ("POST", "/switch_version", {"message_id": "m", "conversation_id": "9"}),
        ]
        for method, path, request_body in refused:
            response = client.request(method, path, json=request_body)
            assert response.status_code == 404, (path, response.text)
            assert error_of(response)["error"] == "unknown_conversation"
        for params in ({"conversation_id": "9"}, {"conversation_id": "x" * 65}):
            assert client.get("/get_history", params=params).status_code in (400, 404)
        checks: list[tuple[dict[str, Any], str]] = [
            ({"title": "x" * 201}, "title"),
            ({"title": 5}, "title"),
            ({"system_prompt": "x" * 101}, "system_prompt"),
            ({"system_prompt": ["x"]}, "system_prompt"),
        ]
        for body, field in checks:
            response = client.patch("/conversations/1", json=body)
            assert error_of(response)["error"] == "invalid_field"
            assert field in error_of(response)["message"]
            response = client.post("/conversations", json=body)
            assert field in error_of(response)["message"]
        response = client.post("/chat_stream", json={"user_input": "x", "conversation_id": 7})
        assert "conversation_id" in error_of(response)["message"]
        assert (listing(client), history(client)) == before
    with server.client() as fresh:
        # A new chat in a session made for it is the session's one conversation.
        created = fresh.post("/conversations", json={"title": "first"}).json()["conversation"]
        assert [c["id"] for c in listing(fresh)["conversations"]] == [created["id"]] == ["1"]


def test_a_session_keeps_a_bounded_number_of_conversations(start_server: ServerFactory) -> None:
    server = start_server(options={"client_roles": ALL_ROLES})
    with server.client() as client:
        send(client, "the oldest")
        for _ in range(MAX_CONVERSATIONS):
            assert client.post("/conversations", json={}).status_code == 200
        ids = [c["id"] for c in listing(client)["conversations"]]
        assert len(ids) == MAX_CONVERSATIONS
        # The least recently used went first.
        assert "1" not in ids and ids[0] == str(MAX_CONVERSATIONS + 1)


def test_a_busy_conversation_cannot_be_deleted_or_switched(
    start_server: ServerFactory, server_app: dict[str, Any]
) -> None:
    server = start_server(
        options={
            "client_roles": ALL_ROLES,
            "mock_params": {"type": "long", "time_per_token_sec": 0.02},
        },
        **server_app,
    )
    with server.client() as client:
        send(client, "a")
        first = history(client)[0]["id"]
        with client.stream("POST", "/chat_stream", json={"user_input": "b"}) as streaming:
            chunks = streaming.iter_raw()  # kept: a dropped iterator closes the stream
            next(chunks)  # the reply has begun
            deleted = client.delete("/conversations/1")
            assert deleted.status_code == 409, deleted.text
            response = client.post("/switch_version", json={"message_id": first})
            assert error_of(response)["error"] == "conversation_busy"
            # A new conversation and a title may come meanwhile; the turn keeps them.
            assert client.post("/conversations", json={"title": "meanwhile"}).status_code == 200
            assert client.patch("/conversations/1", json={"title": "A"}).status_code == 200
            for _ in chunks:
                pass
        # The conversation chosen meanwhile stays current once the turn's reply is saved.
        after = listing(client)
        assert after["current"] == "2"
        assert [c["id"] for c in after["conversations"]] == ["1", "2"]
        assert {c["id"]: c["title"] for c in after["conversations"]} == {"1": "A", "2": "meanwhile"}
        assert len(history(client, "1")) == 4
