"""Who may call what, beyond roles: the API key of every ``/v1/`` route, the access to
``/metrics`` (roles, open, or a token of its own) and CORS, through the app on both loops and
with the official ``openai`` client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from chatstream import ChatStream
from chatstream.adapters.http.auth import bearer_token, presents_token
from chatstream.adapters.starlette import create_app, mountable_app
from chatstream.core import ConfigError

BACKENDS = ["asyncio", "trio"]
KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def mock(**options: Any) -> ChatStream:
    return ChatStream(use_mock_response=True, mock_params={"time_per_token_sec": 0}, **options)


@pytest.fixture
def keyed(backend: str) -> Iterator[TestClient]:
    app = create_app(mock(), secret_key="test", api_key=KEY)

    async def later(request: Request) -> JSONResponse:  # a route the host app adds later
        return JSONResponse({"object": "later"})

    app.router.routes.append(Route("/v1/later", later, methods=["POST"]))
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        yield client


def sdk(client: TestClient, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=api_key, http_client=client, max_retries=0
    )


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_api_key",
        None,
    )


# ---------------------------------------------------------------------------- the API key


def test_every_v1_route_needs_the_key(keyed: TestClient) -> None:
    for method, path in [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/mock"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/later"),  # added after the app was made
        ("GET", "/v1/no-such-route"),
    ]:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": f"Bearer {KEY}x"},
            {"Authorization": f"Bearer {KEY[:-1]}"},
            {"Authorization": "Bearer"},
        ):
            assert_unauthorized(keyed.request(method, path, json=CHAT, headers=headers))
    assert keyed.get("/v1/models", headers=AUTH).json()["data"][0]["id"] == "mock"
    assert keyed.get("/v1/models", headers={"authorization": f"bearer  {KEY} "}).status_code == 200
    answer = keyed.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert answer.json()["choices"][0]["finish_reason"] == "length"
    assert keyed.post("/v1/later", headers=AUTH).json() == {"object": "later"}
    completion = keyed.post("/v1/completions", json={"prompt": "hi"}, headers=AUTH)
    assert completion.json()["object"] == "text_completion"
    assert keyed.get("/v1/no-such-route", headers=AUTH).status_code == 404


def test_other_paths_are_left_to_their_own_rules(keyed: TestClient) -> None:
    assert keyed.get("/health").json()["status"] == "ok"
    assert keyed.get("/").status_code == 200
    assert keyed.get("/get_load").status_code == 200
    assert keyed.get("/metrics").status_code == 403  # the role decides, as without a key
    assert keyed.post("/chat_stream", json={"user_input": "hi"}).text.endswith("<::EOS::>")
    for path in ("/tokenize", "/detokenize"):
        assert keyed.post(path, json={"prompt": "a", "tokens": [97]}).status_code == 200
    assert keyed.get("/version").status_code == 200
    assert keyed.get("/v1x").status_code == 404  # not under /v1/


def test_a_refused_body_closes_the_connection(keyed: TestClient) -> None:
    with_body = keyed.post("/v1/chat/completions", json=CHAT)
    assert with_body.headers["connection"] == "close"
    without = keyed.get("/v1/models")
    assert "connection" not in without.headers


def test_the_openai_client_with_and_without_the_key(keyed: TestClient) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(keyed, "wrong").models.list()
    assert caught.value.code == "invalid_api_key"
    completion = sdk(keyed, KEY).chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert completion.choices[0].finish_reason == "length"


def test_no_key_means_open(backend: str) -> None:
    for api_key in (None, ""):
        app = create_app(mock(), secret_key="test", api_key=api_key)
        with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
            assert client.get("/v1/models").status_code == 200


def test_under_a_mount_the_app_own_v1_is_keyed(backend: str) -> None:
    chat_stream = mock()
    inner = mountable_app(chat_stream, secret_key="test", api_key=KEY)

    async def own_v1(request: Request) -> JSONResponse:
        return JSONResponse({"host": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with chat_stream:
            yield

    host = Starlette(
        routes=[Route("/v1/host", own_v1), Mount("/chat", app=inner)], lifespan=lifespan
    )
    with TestClient(host, backend=backend) as client:  # type: ignore[arg-type]
        assert_unauthorized(client.get("/chat/v1/models"))
        assert client.get("/chat/v1/models", headers=AUTH).status_code == 200
        assert client.get("/v1/host").json() == {"host": True}  # the host's own rules
        assert client.get("/chat/health").status_code == 200


def test_bearer_parsing() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("  BEARER   abc  ") == "abc"
    assert bearer_token("Bearer") is None
    assert bearer_token("Token abc") is None
    assert presents_token("Bearer ключ".encode().decode("latin-1"), "ключ")  # UTF-8 bytes
    assert not presents_token("Bearer ключ", "ключ")  # not what a client can send
    assert not presents_token(None, KEY)


# ---------------------------------------------------------------------------- /metrics


def test_metrics_follow_the_role_by_default(backend: str) -> None:
    with TestClient(create_app(mock(), secret_key="test"), backend=backend) as client:  # type: ignore[arg-type]
        assert client.get("/metrics").status_code == 403


def test_open_metrics_answer_everyone(backend: str) -> None:
    app = create_app(mock(), secret_key="test", open_metrics=True, api_key=KEY)
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        response = client.get("/metrics")
        assert response.status_code == 200
        assert "chatstream_requests_running" in response.text


def test_a_metrics_token_is_needed_whatever_the_role(backend: str) -> None:
    roles = {"user": {"apis": {"allow": "all", "auth_method": "nothing", "use_session": True}}}
    app = create_app(
        mock(client_roles=roles), secret_key="test", open_metrics=True, metrics_token="scrape"
    )
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        for headers in ({}, {"Authorization": "Bearer nope"}, AUTH):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"] == "invalid_token"
            assert refused.headers["www-authenticate"] == "Bearer"
        scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape"})
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")


# ---------------------------------------------------------------------------- CORS


def preflight(client: TestClient, origin: str, path: str = "/v1/chat/completions") -> Any:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_lets_the_named_origins_in(backend: str) -> None:
    app = create_app(mock(), secret_key="test", api_key=KEY, cors_origins=["https://app.example"])
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        allowed = preflight(client, "https://app.example")
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in allowed.headers["access-control-allow-headers"]
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in allowed.headers
        refused = preflight(client, "https://evil.example")
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        # The actual request, and the refusal of a missing key, both readable by the page.
        headers = {"Origin": "https://app.example"}
        answer = client.post("/v1/chat/completions", json=CHAT, headers={**headers, **AUTH})
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        no_key = client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert no_key.status_code == 401
        assert no_key.headers["access-control-allow-origin"] == "https://app.example"


def test_cors_for_any_origin_and_none_by_default(backend: str) -> None:
    anyone = create_app(mock(), secret_key="test", cors_origins=["*"])
    with TestClient(anyone, backend=backend) as client:  # type: ignore[arg-type]
        response = preflight(client, "https://anywhere.example", "/tokenize")
        assert response.headers["access-control-allow-origin"] == "*"
    default = create_app(mock(), secret_key="test")
    with TestClient(default, backend=backend) as client:  # type: ignore[arg-type]
        response = preflight(client, "https://app.example")
        assert "access-control-allow-origin" not in response.headers
        simple = client.get("/v1/models", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in simple.headers


@pytest.mark.parametrize("origins", ["https://app.example", ["https://a.example", ""], [None]])
def test_cors_origins_must_be_a_list_of_origins(origins: Any) -> None:
    with pytest.raises(ConfigError, match="cors_origins"):
        create_app(mock(), cors_origins=origins)
