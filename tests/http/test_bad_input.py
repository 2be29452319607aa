"""Every malformed request gets a 4xx with a JSON body that says what was wrong, and changes
nothing: no leaked slot, no corrupted history, no dead worker, never a 500."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatstream.adapters.model import mock_texts

from .conftest import ServerFactory

ALL_ROLES = {"user": {"apis": {"allow": "all", "auth_method": "nothing", "use_session": True}}}


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["message"], str) and body["message"]
    return dict(body)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"{}", 400, "missing_user_input"),
        (b'{"user_input": 5}', 400, "missing_user_input"),
        (b'{"user_input": "   "}', 400, "empty_user_input"),
        (b'{"user_input": "x", "regenerate": "True"}', 400, "invalid_field"),
        (b'{"user_input": "x", "generation_params": []}', 400, "invalid_field"),
        (
            b'{"user_input": "x", "generation_params": {"warmth": 2}}',
            400,
            "invalid_generation_params",
        ),
        (
            b'{"user_input": "x", "generation_params": {"top_p": 0}}',
            400,
            "invalid_generation_params",
        ),
        (
            b'{"user_input": "x", "generation_params": {"max_new_tokens": 100000}}',
            400,
            "invalid_generation_params",
        ),
        (b'{"regenerate": true}', 400, "bad_request"),
        (json.dumps({"user_input": "y" * 101}).encode(), 400, "user_input_too_long"),
        (json.dumps({"user_input": "z" * 3000}).encode(), 413, "body_too_large"),
    ],
)
def test_malformed_chat_requests(
    start_server: ServerFactory, body: bytes, status: int, code: str
) -> None:
    server = start_server(
        options={"client_roles": ALL_ROLES},
        http={"max_input_chars": 100, "max_body_bytes": 2048},
    )
    with server.client() as client:
        response = client.post(
            "/chat_stream", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status
        assert error_of(response)["error"] == code
        # Nothing changed: no slot held, no history, the worker still answers.
        assert client.get("/get_load").json()["chatstream_workers"][0]["processing"] == 0
        prompt = client.get("/get_prompt").json()
        assert prompt.get("prompt_text") is None
        with client.stream("POST", "/chat_stream", json={"user_input": "fine"}) as ok:
            assert mock_texts.ROUND_EN[0] in ok.read().decode()


def test_bad_feedback_and_params_change_nothing(start_server: ServerFactory) -> None:
    server = start_server(options={"client_roles": ALL_ROLES})
    with server.client() as client:
        with client.stream("POST", "/chat_stream", json={"user_input": "hi"}) as response:
            response.read()
        before = client.get("/get_prompt").json()["prompt_text"]
        assert error_of(client.post("/set_feedback", json={"message_id": "nope"}))["error"] == (
            "unknown_message_id"
        )
        assert client.post("/set_feedback", json={"message_id": 3}).status_code == 400
        assert client.post("/set_feedback", content=b"{").status_code == 400
        assert client.post("/set_generation_params", json={"temperature": "hot"}).status_code == 400
        assert client.post("/set_generation_params", json={"top_k_value": True}).status_code == 400
        assert client.get("/get_prompt").json()["prompt_text"] == before
        params = client.get("/get_generation_params").json()["generation_params"]
        assert (params["temperature"], params["top_k_value"]) == (1.0, 50)


JSON_ROUTES = ["/chat_stream", "/set_generation_params", "/set_feedback", "/v1/chat/completions"]


def _code_of(path: str, response: httpx.Response) -> str:
    assert response.status_code == 400, (path, response.status_code, response.text)
    body = response.json()
    # The OpenAI route answers in OpenAI's error shape.
    return str(body["error"]["code"] if path.startswith("/v1/") else error_of(response)["error"])


def test_deep_nesting_is_400_on_every_json_route(start_server: ServerFactory) -> None:
    # ~970 levels raised RecursionError in the JSON parser: a 500 on every route.
    server = start_server(options={"client_roles": ALL_ROLES})
    with server.client() as client:
        for depth in (33, 970, 5000):
            body = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
            for path in JSON_ROUTES:
                response = client.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
                assert _code_of(path, response) == "json_too_deep"
        # 32 levels is fine (and then refused for what it is, not for its depth).
        shallow = b'{"user_input": "x", "generation_params": {"stop": ' + b"[" * 30
        shallow += b"]" * 30 + b"}}"
        response = client.post(
            "/chat_stream", content=shallow, headers={"content-type": "application/json"}
        )
        assert error_of(response)["error"] == "invalid_generation_params"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/set_generation_params", {"\ud800": 1}, "a key of the body"),
        ("/set_generation_params", {"stop": ["ok", "\udfff"]}, "'stop[1]'"),
        ("/chat_stream", {"user_input": "x", "generation_params": {"\ud800": 1}}, "a key of"),
        ("/chat_stream", {"user_input": "a\udfffb"}, "'user_input'"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi \ud83d"}]},
            "'messages[0].content'",
        ),
        # On a real reply it returned 200, and every /get_history after it was a 500.
        ("/set_feedback", {"message_id": "<reply>", "form_data": "\udfff"}, "'form_data'"),
    ],
)
def test_lone_surrogates_are_400_naming_the_field(
    start_server: ServerFactory, path: str, body: dict[str, Any], field: str
) -> None:
    server = start_server(options={"client_roles": ALL_ROLES})
    with server.client() as client:
        with client.stream("POST", "/chat_stream", json={"user_input": "hi"}) as first:
            first.read()
        history = client.get("/get_history").json()["messages"]
        if body.get("message_id") == "<reply>":
            body = {**body, "message_id": history[-1]["id"]}
        # json.dumps writes a lone surrogate as its \\u escape: valid JSON that parses back.
        response = client.post(path, content=json.dumps(body).encode())
        assert _code_of(path, response) == "invalid_code_point"
        message = (
            response.json()["error"]["message"]
            if path.startswith("/v1/")
            else (response.json()["message"])
        )
        assert field in message
        # Nothing was stored: every later read still renders.
        assert client.get("/get_history").json()["messages"] == history
        assert client.get("/get_generation_params").status_code == 200
        assert client.get("/get_prompt").status_code == 200


def test_regenerate_with_no_history_is_400(start_server: ServerFactory) -> None:
    server = start_server()
    with server.client() as client:
        response = client.post("/chat_stream", json={"regenerate": True})
        assert response.status_code == 400
        assert "no user message" in error_of(response)["message"]


def test_prompt_longer_than_the_context(start_server: ServerFactory) -> None:
    server = start_server(options={"context_len": 64, "max_new_tokens": 16})
    with server.client() as client:
        response = client.post("/chat_stream", json={"user_input": "long " * 40})
        assert error_of(response)["error"] == "prompt_too_long"


# Text with every code point, lone surrogates included (what JSON's \\u escapes can carry).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=20)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    [
        "user_input",
        "regenerate",
        "generation_params",
        "message_id",
        "is_like",
        "form_data",
        "temperature",
        "top_k_value",
        "top_p_value",
        "messages",
        "max_tokens",
        "stream",
        "n",
        "stop",
        "seed",
    ]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(
        [
            "/chat_stream",
            "/set_generation_params",
            "/set_feedback",
            "/v1/chat/completions",
            "/clear_context",
        ]
    ),
    body=st.dictionaries(FIELDS, JSON_VALUES, max_size=5) | JSON_VALUES,
)
def test_no_request_body_produces_a_500(
    start_server: ServerFactory, path: str, body: object
) -> None:
    server = shared_server(start_server)
    with server.client() as client:
        try:
            content = json.dumps(body).encode()
        except ValueError:
            content = b"{"
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert response.status_code < 500, (path, body, response.text)
        if response.status_code >= 400:
            response.json()
        load = client.get("/get_load").json()["chatstream_workers"][0]
        assert load["processing"] == 0 and load["waiting"] == 0


_servers: dict[int, Any] = {}


def shared_server(start_server: ServerFactory) -> Any:
    # One server for all the examples of one test run (per event loop).
    key = id(start_server)
    if key not in _servers:
        _servers.clear()
        _servers[key] = start_server(
            options={
                "client_roles": ALL_ROLES,
                "mock_params": {"type": "echo", "time_per_token_sec": 0},
            }
        )
    return _servers[key]


def test_a_poisoned_seed_is_refused_and_the_running_streams_never_notice(
    start_server: ServerFactory,
) -> None:
    # A seed past 2**63 once reached the model thread and failed the whole batch: all four
    # streams ended with "Overflow when unpacking long long" (a 500 on the OpenAI route).
    server = start_server(
        options={
            "num_of_concurrent_executions": 4,
            "mock_params": {"type": "long", "time_per_token_sec": 0.01},
        }
    )
    huge = 18446744073709551616
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(server.client()) for _ in range(4)]
        *streaming, poisoner = clients
        responses = [
            stack.enter_context(client.stream("POST", "/chat_stream", json={"user_input": "hi"}))
            for client in streaming
        ]
        refused = poisoner.post(
            "/chat_stream", json={"user_input": "x", "generation_params": {"seed": huge}}
        )
        assert error_of(refused)["error"] == "invalid_generation_params"
        assert "seed" in refused.json()["message"]
        openai = poisoner.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "seed": huge},
        )
        assert openai.status_code == 400
        assert "seed" in openai.json()["error"]["message"]
        for response in responses:
            body = response.read().decode()
            assert "<::ERROR::>" not in body
            assert body.endswith("<::EOS::>")


def test_only_an_accepted_request_creates_a_session(start_server: ServerFactory) -> None:
    server = start_server(
        options={
            "num_of_concurrent_executions": 1,
            "max_queue_size": 0,
            "too_many_request_as_http_error": True,
            "mock_params": {"type": "long", "time_per_token_sec": 0.02},
        }
    )

    def cookie_of(response: httpx.Response) -> str | None:
        cookie: str | None = response.headers.get("set-cookie")
        return cookie

    with server.client() as first, server.client() as other:
        assert cookie_of(first.post("/chat_stream", json={})) is None  # 400
        bad_params = first.post("/set_generation_params", json={"top_p": 7})
        assert bad_params.status_code == 400 and cookie_of(bad_params) is None
        with first.stream("POST", "/chat_stream", json={"user_input": "hi"}) as running:
            assert running.status_code == 200
            assert cookie_of(running) is not None
            # The slot is taken and there is no waiting room: a 429, and no session for it.
            refused = other.post("/chat_stream", json={"user_input": "me too"})
            assert refused.status_code == 429 and cookie_of(refused) is None
            running.read()
        assert other.get("/get_history").json()["messages"] == []
        good_params = other.post("/set_generation_params", json={"top_p": 0.5})
        assert good_params.status_code == 200 and cookie_of(good_params) is not None


def test_feedback_data_is_bounded(start_server: ServerFactory) -> None:
    server = start_server()
    with server.client() as client:
        client.post("/chat_stream", json={"user_input": "hi"})
        reply = client.get("/get_history").json()["messages"][-1]["id"]
        big = {"message_id": reply, "is_like": True, "form_data": {"note": "n" * 5000}}
        refused = client.post("/set_feedback", json=big)
        assert error_of(refused)["error"] == "feedback_too_large"
        assert "4096" in refused.json()["message"]
        assert "feedback" not in client.get("/get_history").json()["messages"][-1]
        fine = {"message_id": reply, "is_like": True, "form_data": {"note": "good"}}
        assert client.post("/set_feedback", json=fine).json()["success"] is True
        stored = client.get("/get_history").json()["messages"][-1]["feedback"]
        assert stored == {"is_like": True, "data": {"note": "good"}}
