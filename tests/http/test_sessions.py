"""Sessions: signed cookies, the middleware through real HTTP responses, and the stores.

The middleware is exercised through Starlette's TestClient on both event loops and judged by
the response headers a browser would see. The stores are driven directly, with a fake clock.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import logging
import pathlib
from typing import Any, Literal

import anyio
import itsdangerous
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

import chatstream.adapters.http.session_stores as session_stores_module
import chatstream.adapters.http.sessions as sessions_module
from chatstream.adapters.http.session_stores import session_bytes
from chatstream.adapters.http.sessions import CLOCK_SKEW_SECONDS, DEFAULT_SESSION_TTL
from chatstream.adapters.sessions import (
    SESSION_SCOPE_KEY,
    JSONMemoryStore,
    MemoryStore,
    Session,
    SessionCookie,
    SessionData,
    SessionMiddleware,
    SessionStore,
    get_session,
    new_session_id,
)
from chatstream.core import ConfigError, Conversation, LocalProtocolError, Role, TurnInFlightError
from chatstream.core.conversation import Message, MessageStatus

SECRET = "test-secret-key"
COOKIE = "chatstream_session"
Backend = Literal["asyncio", "trio"]


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> Backend:
    value: Backend = request.param
    return value


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """A store of one's own (the protocol is all the middleware needs) that counts loads."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.loads = 0

    async def load(self, session_id: str) -> SessionData | None:
        self.loads += 1
        return await self.inner.load(session_id)

    async def save(self, session_id: str, data: SessionData) -> None:
        await self.inner.save(session_id, data)

    async def delete(self, session_id: str) -> None:
        await self.inner.delete(session_id)


# ---------------------------------------------------------------------- helpers


def make_app(store: SessionStore | None = None, **options: Any) -> Starlette:
    """Routes that use the Session API, behind the middleware."""
    options.setdefault("secret_key", SECRET)

    async def peek(request: Request) -> Response:
        session = get_session(request)
        data = await session.load()
        role = None if data is None else data.role
        return JSONResponse({"id": session.id, "found": data is not None, "role": role})

    async def create(request: Request) -> Response:
        session = get_session(request)
        data = await session.load_or_create()
        return JSONResponse({"id": session.id, "is_new": session.is_new, "role": data.role})

    async def set_role(request: Request) -> Response:
        session = get_session(request)
        data = await session.load_or_create()
        data.role = request.path_params["name"]
        await session.save()
        return JSONResponse({"id": session.id, "role": data.role})

    async def clear(request: Request) -> Response:
        await get_session(request).clear()
        return JSONResponse({"cleared": True})

    async def clear_then_create(request: Request) -> Response:
        session = get_session(request)
        await session.clear()
        await session.load_or_create()
        return JSONResponse({"id": session.id})

    async def create_then_clear(request: Request) -> Response:
        session = get_session(request)
        await session.load_or_create()
        await session.clear()
        return JSONResponse({"id": session.id})

    async def with_cookies(request: Request) -> Response:
        await get_session(request).load_or_create()
        response = JSONResponse({})
        response.set_cookie("a", "1")
        response.set_cookie("b", "2", httponly=True)
        return response

    async def plain(request: Request) -> Response:
        return Response("ok")

    routes = [
        Route("/peek", peek),
        Route("/create", create, methods=["POST"]),
        Route("/role/{name}", set_role, methods=["POST"]),
        Route("/clear", clear, methods=["POST"]),
        Route("/clear-then-create", clear_then_create, methods=["POST"]),
        Route("/create-then-clear", create_then_clear, methods=["POST"]),
        Route("/with-cookies", with_cookies, methods=["POST"]),
        Route("/plain", plain),
    ]
    return Starlette(
        routes=routes, middleware=[Middleware(SessionMiddleware, store=store, **options)]
    )


def session_set_cookies(response: Any, name: str = COOKIE) -> list[str]:
    headers: list[str] = response.headers.get_list("set-cookie")
    return [h for h in headers if h.startswith(f"{name}=")]


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def attributes(set_cookie: str) -> list[str]:
    return [part.strip() for part in set_cookie.split(";")[1:]]


def cookie_header(value: str) -> dict[str, str]:
    return {"cookie": f"{COOKIE}={value}"}


def finished_conversation(turns: int) -> Conversation:
    conversation = Conversation()
    for n in range(turns):
        conversation.start_turn(f"q{n}", user_message_id=f"u{n}", reply_id=f"a{n}")
        conversation.append_reply(f"answer {n}")
        conversation.finish_reply("stop")
    return conversation


# ---------------------------------------------------------------------- cookie signing


def test_new_session_ids_are_random_url_safe_and_43_chars() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    for session_id in ids:
        assert len(session_id) == 43
        assert set(session_id) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_cookie_value_is_id_timestamp_and_an_itsdangerous_hmac_sha256_signature() -> None:
    clock = FakeClock()
    clock.now = 1_800_000_000.5
    session_id = new_session_id()
    value = SessionCookie(SECRET, clock=clock).sign(session_id)
    # The kept library's own signer, configured as documented, verifies it.
    signer = itsdangerous.TimestampSigner(
        SECRET, salt="chatstream.session", key_derivation="hmac", digest_method=hashlib.sha256
    )
    unsigned, signed_at = signer.unsign(value, return_timestamp=True)
    assert unsigned.decode() == session_id
    assert signed_at.timestamp() == 1_800_000_000  # whole seconds
    got_id, timestamp, signature = value.split(".")
    assert got_id == session_id
    # The signature: HMAC-SHA256 over "<id>.<timestamp>", unpadded URL-safe base64.
    key = hmac.new(SECRET.encode(), b"chatstream.session", hashlib.sha256).digest()
    digest = hmac.new(key, f"{session_id}.{timestamp}".encode(), hashlib.sha256).digest()
    assert signature == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert "=" not in value
    assert len(value) < 100
    assert SessionCookie(SECRET, clock=clock).unsign(value) == session_id
    # A str key is its UTF-8 bytes.
    assert SessionCookie(SECRET.encode(), clock=clock).sign(session_id) == value


def test_a_cookie_carries_its_age_and_expires_after_the_limit() -> None:
    clock = FakeClock()
    clock.now = 1_800_000_000
    cookie = SessionCookie(SECRET, max_age_seconds=3600, clock=clock)
    session_id = new_session_id()
    value = cookie.sign(session_id)
    clock.now += 3600
    assert cookie.read(value) == (session_id, 3600.0)
    clock.now += 1
    assert cookie.read(value) is None
    assert cookie.unsign(value) is None
    # Without a limit, age alone never refuses it.
    assert SessionCookie(SECRET, clock=clock).unsign(value) == session_id


def test_a_cookie_from_a_node_whose_clock_runs_ahead_is_accepted_within_the_skew() -> None:
    ahead, here = FakeClock(), FakeClock()
    ahead.now = 1_800_000_000 + CLOCK_SKEW_SECONDS
    here.now = 1_800_000_000
    session_id = new_session_id()
    value = SessionCookie(SECRET, clock=ahead).sign(session_id)
    assert SessionCookie(SECRET, max_age_seconds=10, clock=here).read(value) == (session_id, 0.0)
    ahead.now += 1
    later = SessionCookie(SECRET, clock=ahead).sign(session_id)
    assert SessionCookie(SECRET, max_age_seconds=10, clock=here).read(later) is None


def test_unsign_rejects_anything_not_signed_by_this_key() -> None:
    signer = SessionCookie(SECRET)
    session_id = new_session_id()
    good = signer.sign(session_id)
    _, timestamp, signature = good.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    other_id = new_session_id()
    for value in [
        "",
        ".",
        "..",
        "garbage",
        f"{session_id}.",
        f"{session_id}.{signature}",  # no timestamp
        f".{timestamp}.{signature}",
        f"{session_id}.{timestamp}.{flipped}",
        f"{other_id}.{timestamp}.{signature}",
        f"{session_id}.{timestamp}x.{signature}",
        f"{session_id}.{timestamp}.{signature}=",
        f"{session_id}.{timestamp}.{signature[:-1]}",
        f"x.{session_id}.{timestamp}.{signature}",
        f"{'a' * 300}.{timestamp}.{signature}",
        f"{session_id}é.{timestamp}.{signature}",
        f"{session_id}.{timestamp}.{signature[:-1]}é",
        "\ud800." + "a" * 43,
        SessionCookie("another key").sign(session_id),
    ]:
        assert signer.unsign(value) is None, value
    assert signer.unsign(good) == session_id


@pytest.mark.parametrize("key", ["", b""])
def test_empty_secret_key_is_refused(key: str | bytes) -> None:
    with pytest.raises(ConfigError, match="secret_key"):
        SessionCookie(key)


@pytest.mark.parametrize("age", [0, -1.0])
def test_a_cookie_age_limit_must_be_positive(age: float) -> None:
    with pytest.raises(ConfigError, match="session_ttl"):
        SessionCookie(SECRET, max_age_seconds=age)
    with pytest.raises(ConfigError, match="session_ttl"):
        SessionMiddleware(make_app(), secret_key=SECRET, session_ttl=age)


# ---------------------------------------------------------------------- middleware over HTTP


def test_cookie_less_requests_create_nothing(backend: Backend) -> None:
    store = MemoryStore()
    with TestClient(make_app(store), backend=backend) as client:
        for path in ("/peek", "/plain"):
            response = client.get(path)
            assert response.status_code == 200
            assert "set-cookie" not in response.headers
        assert client.get("/peek").json() == {"id": None, "found": False, "role": None}
    assert len(store) == 0


def test_load_or_create_sets_an_http_only_lax_cookie_once(backend: Backend) -> None:
    store = MemoryStore()
    with TestClient(make_app(store), backend=backend) as client:
        response = client.post("/create")
        body = response.json()
        assert body["is_new"] is True
        (set_cookie,) = session_set_cookies(response)
        assert SessionCookie(SECRET).unsign(cookie_value(set_cookie)) == body["id"]
        assert attributes(set_cookie) == ["Path=/", "HttpOnly", "SameSite=Lax"]
        assert len(store) == 1

        # The browser sends the cookie back: same session, no new cookie.
        again = client.post("/create")
        assert again.json() == {"id": body["id"], "is_new": False, "role": None}
        assert "set-cookie" not in again.headers
        peek = client.get("/peek")
        assert peek.json() == {"id": body["id"], "found": True, "role": None}
    assert len(store) == 1


def test_cookie_options_show_in_the_header(backend: Backend) -> None:
    app = make_app(cookie_name="sid", secure=True, same_site="strict", path="/chat", max_age=3600)
    with TestClient(app, backend=backend) as client:
        (set_cookie,) = session_set_cookies(client.post("/create"), "sid")
    assert attributes(set_cookie) == [
        "Path=/chat",
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Max-Age=3600",
    ]


def test_same_site_none_with_secure(backend: Backend) -> None:
    with TestClient(make_app(same_site="none", secure=True), backend=backend) as client:
        (set_cookie,) = session_set_cookies(client.post("/create"))
    assert attributes(set_cookie) == ["Path=/", "HttpOnly", "SameSite=None", "Secure"]


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"cookie_name": "bad name"}, "cookie_name"),
        ({"cookie_name": "a;b"}, "cookie_name"),
        ({"cookie_name": ""}, "cookie_name"),
        ({"path": "chat"}, "path"),
        ({"path": "/a;b"}, "path"),
        ({"path": "/a\nb"}, "path"),
        ({"same_site": "sometimes"}, "same_site"),
        ({"same_site": "none"}, "same_site"),
        ({"max_age": 0}, "max_age"),
        ({"secret_key": ""}, "secret_key"),
    ],
)
def test_invalid_middleware_options_are_refused(options: dict[str, Any], option: str) -> None:
    options.setdefault("secret_key", SECRET)
    with pytest.raises(ConfigError) as excinfo:
        SessionMiddleware(make_app(), **options)
    assert excinfo.value.option == option


def test_bad_cookies_mean_no_session_and_a_fresh_one_on_create(backend: Backend) -> None:
    store = MemoryStore()
    with TestClient(make_app(store), backend=backend) as client:
        good = cookie_value(session_set_cookies(client.post("/create"))[0])
        session_id, _, signature = good.partition(".")
        client.cookies.clear()
        flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
        bad_values = [
            f"{session_id}.{flipped}",  # tampered signature
            f"{new_session_id()}.{signature}",  # another id under this signature
            SessionCookie("another key").sign(session_id),  # signed with another key
            "garbage",
            "",
            '"quoted"',
        ]
        for value in bad_values:
            peek = client.get("/peek", headers=cookie_header(value))
            assert peek.status_code == 200
            assert peek.json() == {"id": None, "found": False, "role": None}
            created = client.post("/create", headers=cookie_header(value))
            assert created.json()["is_new"] is True
            assert created.json()["id"] != session_id
            (set_cookie,) = session_set_cookies(created)
            assert cookie_value(set_cookie) != value
            client.cookies.clear()
    assert len(store) == 1 + len(bad_values)


def test_a_cookie_older_than_the_session_ttl_is_refused_though_the_store_has_it(
    backend: Backend,
) -> None:
    wall, idle = FakeClock(), FakeClock()
    store = MemoryStore(ttl_seconds=10 * 3600, clock=idle)  # the store would keep it
    app = make_app(store, session_ttl=3600, clock=wall)
    with TestClient(app, backend=backend) as client:
        created = client.post("/create")
        leaked = cookie_value(session_set_cookies(created)[0])
        # The leaked cookie, replayed without the refreshes a browser would have taken.
        client.cookies.clear()
        wall.now += 3600 + 60  # the TTL, plus the refresh allowance (a minute)
        assert client.get("/peek", headers=cookie_header(leaked)).json()["found"] is True
        wall.now += 1
        assert client.get("/peek", headers=cookie_header(leaked)).json() == {
            "id": None,
            "found": False,
            "role": None,
        }
    assert len(store) == 1


class _StoreWithoutTTL:
    async def load(self, session_id: str) -> SessionData | None:
        return None

    async def save(self, session_id: str, data: SessionData) -> None:
        pass

    async def delete(self, session_id: str) -> None:
        pass


def test_the_session_ttl_defaults_to_the_stores() -> None:
    assert SessionMiddleware(make_app(), secret_key=SECRET).session_ttl == DEFAULT_SESSION_TTL
    store = MemoryStore(ttl_seconds=123)
    assert SessionMiddleware(make_app(), store=store, secret_key=SECRET).session_ttl == 123
    no_ttl = SessionMiddleware(make_app(), store=_StoreWithoutTTL(), secret_key=SECRET)
    assert no_ttl.session_ttl == DEFAULT_SESSION_TTL
    given = SessionMiddleware(make_app(), store=store, secret_key=SECRET, session_ttl=50)
    assert given.session_ttl == 50


def test_a_session_in_use_gets_a_fresh_cookie_and_lives_past_its_first_ttl(
    backend: Backend,
) -> None:
    wall, idle = FakeClock(), FakeClock()
    store = MemoryStore(ttl_seconds=3600, clock=idle)
    with TestClient(make_app(store, clock=wall), backend=backend) as client:
        created = client.post("/create")
        session_id = created.json()["id"]
        first = cookie_value(session_set_cookies(created)[0])
        # Within a minute of signing: no new cookie.
        wall.now += 59
        idle.now += 59
        assert session_set_cookies(client.get("/peek")) == []
        # Requests that never look at the session do not refresh it either.
        wall.now += 1
        idle.now += 1
        assert session_set_cookies(client.get("/plain")) == []
        # A request that finds the session, a minute after signing: signed again, same id.
        refreshed = session_set_cookies(client.get("/peek"))
        assert len(refreshed) == 1
        assert attributes(refreshed[0]) == ["Path=/", "HttpOnly", "SameSite=Lax"]
        second = cookie_value(refreshed[0])
        assert second != first
        assert second.split(".")[0] == session_id
        # Used every 50 minutes for five hours (five TTLs): still the same session.
        for _ in range(6):
            wall.now += 3000
            idle.now += 3000
            peek = client.get("/peek")
            assert peek.json()["id"] == session_id
            assert len(session_set_cookies(peek)) == 1
        # The first cookie, replayed, is long expired.
        client.cookies.clear()
        stale = client.get("/peek", headers=cookie_header(first)).json()
        assert stale["found"] is False


def test_an_unknown_session_is_not_refreshed(backend: Backend) -> None:
    wall = FakeClock()
    store = MemoryStore()
    with TestClient(make_app(store, clock=wall), backend=backend) as client:
        value = cookie_value(session_set_cookies(client.post("/create"))[0])
        session_id = value.split(".")[0]
        anyio.run(store.delete, session_id)
        wall.now += 120
        response = client.get("/peek")
        assert response.json()["found"] is False
        assert session_set_cookies(response) == []


def test_a_validly_signed_cookie_for_an_expired_session_is_no_session(backend: Backend) -> None:
    clock = FakeClock()
    store = MemoryStore(ttl_seconds=60, clock=clock)
    with TestClient(make_app(store), backend=backend) as client:
        created = client.post("/create")
        old_id = created.json()["id"]
        old_cookie = cookie_value(session_set_cookies(created)[0])
        clock.now += 60
        assert client.get("/peek").json() == {"id": None, "found": False, "role": None}
        renewed = client.post("/create")
        assert renewed.json()["is_new"] is True
        assert renewed.json()["id"] != old_id
        assert cookie_value(session_set_cookies(renewed)[0]) != old_cookie


def test_the_first_valid_cookie_of_several_wins(backend: Backend) -> None:
    store = MemoryStore()
    with TestClient(make_app(store), backend=backend) as client:
        created = client.post("/create")
        good = cookie_value(session_set_cookies(created)[0])
        client.cookies.clear()
        header = {"cookie": f"flag; other=1; {COOKIE}=garbage; {COOKIE}={good}"}
        assert client.get("/peek", headers=header).json()["id"] == created.json()["id"]


def test_other_set_cookie_headers_are_kept(backend: Backend) -> None:
    with TestClient(make_app(), backend=backend) as client:
        response = client.post("/with-cookies")
    set_cookies = response.headers.get_list("set-cookie")
    assert len(set_cookies) == 3
    assert set_cookies[0].startswith("a=1;")
    assert set_cookies[1].startswith("b=2;")
    assert set_cookies[2].startswith(f"{COOKIE}=")
    assert response.cookies["a"] == "1" and response.cookies["b"] == "2"


def test_clear_deletes_the_data_and_expires_the_cookie(backend: Backend) -> None:
    store = MemoryStore()
    with TestClient(make_app(store), backend=backend) as client:
        client.post("/role/admin")
        assert client.get("/peek").json()["role"] == "admin"
        cleared = client.post("/clear")
        (set_cookie,) = session_set_cookies(cleared)
        assert cookie_value(set_cookie) == ""
        assert attributes(set_cookie) == [
            "Path=/",
            "HttpOnly",
            "SameSite=Lax",
            "Max-Age=0",
            "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        ]
        assert len(store) == 0
        # The client dropped the cookie, as a browser does.
        assert COOKIE not in client.cookies
        assert client.get("/peek").json() == {"id": None, "found": False, "role": None}


def test_clear_without_a_session(backend: Backend) -> None:
    with TestClient(make_app(), backend=backend) as client:
        # No cookie: nothing to expire.
        assert "set-cookie" not in client.post("/clear").headers
        # A bad cookie is expired all the same.
        (set_cookie,) = session_set_cookies(client.post("/clear", headers=cookie_header("garbage")))
        assert "Max-Age=0" in attributes(set_cookie)


def test_a_session_created_and_cleared_in_one_request_leaves_nothing(backend: Backend) -> None:
    store = MemoryStore()
    with TestClient(make_app(store), backend=backend) as client:
        response = client.post("/create-then-clear")
        assert response.json() == {"id": None}
        assert "set-cookie" not in response.headers
    assert len(store) == 0


def test_clear_then_create_replaces_the_cookie(backend: Backend) -> None:
    store = MemoryStore()
    with TestClient(make_app(store), backend=backend) as client:
        old_id = client.post("/create").json()["id"]
        response = client.post("/clear-then-create")
        (set_cookie,) = session_set_cookies(response)
        new_id = response.json()["id"]
        assert new_id != old_id
        assert SessionCookie(SECRET).unsign(cookie_value(set_cookie)) == new_id
        assert client.get("/peek").json()["id"] == new_id
    assert len(store) == 1


def test_a_random_key_is_used_and_a_warning_logged_without_a_secret(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="chatstream"):
        middleware = SessionMiddleware(make_app())
    (record,) = caplog.records
    assert record.name == "chatstream" and record.levelno == logging.WARNING
    message = record.getMessage()
    assert "restart" in message and "worker processes" in message and "secret_key" in message
    assert isinstance(middleware.store, MemoryStore)

    caplog.clear()
    store = MemoryStore()
    with TestClient(make_app(store, secret_key=None), backend=backend) as client:
        assert len(caplog.records) == 1  # Starlette builds the middleware once
        session_id = client.post("/role/guest").json()["id"]
        assert client.get("/peek").json() == {"id": session_id, "found": True, "role": "guest"}


def test_no_warning_with_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="chatstream"):
        SessionMiddleware(make_app(), secret_key=SECRET)
        SessionMiddleware(make_app(), secret_key=b"\x00\xff bytes")
    assert caplog.records == []


def test_two_workers_with_one_secret_and_one_store_share_sessions(backend: Backend) -> None:
    shared = JSONMemoryStore()
    worker_1, worker_2 = make_app(shared), make_app(shared)
    stranger = make_app(shared, secret_key="another key")
    with (
        TestClient(worker_1, backend=backend) as client_1,
        TestClient(worker_2, backend=backend) as client_2,
        TestClient(stranger, backend=backend) as client_3,
    ):
        created = client_1.post("/role/editor")
        session_id = created.json()["id"]
        value = cookie_value(session_set_cookies(created)[0])
        peek = client_2.get("/peek", headers=cookie_header(value))
        assert peek.json() == {"id": session_id, "found": True, "role": "editor"}
        client_2.post("/role/admin", headers=cookie_header(value))
        assert client_1.get("/peek").json()["role"] == "admin"
        # A worker with another key does not accept the cookie.
        assert client_3.get("/peek", headers=cookie_header(value)).json()["found"] is False
    assert len(shared) == 1


def test_load_asks_the_store_once_per_request(backend: Backend) -> None:
    store = CountingStore()

    async def twice(request: Request) -> Response:
        session = get_session(request)
        first = await session.load_or_create()
        second = await session.load()
        return JSONResponse({"same": first is second})

    app = Starlette(
        routes=[Route("/twice", twice)],
        middleware=[Middleware(SessionMiddleware, store=store, secret_key=SECRET)],
    )
    with TestClient(app, backend=backend) as client:
        assert client.get("/twice").json() == {"same": True}  # no cookie: no store load
        assert store.loads == 0
        assert client.get("/twice").json() == {"same": True}
        assert store.loads == 1


def test_session_creation_after_the_response_started_is_refused(backend: Backend) -> None:
    store = MemoryStore()
    outcomes: list[str] = []

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        session = get_session(scope)
        if scope["path"] == "/early":
            await session.load_or_create()
        # No "headers" key at all: the middleware must cope.
        await send({"type": "http.response.start", "status": 200})
        try:
            await session.load_or_create()
            outcomes.append(f"loaded {session.is_new}")
        except RuntimeError as exc:
            outcomes.append(str(exc))
        if scope["path"] == "/late-clear":
            await session.clear()
            outcomes.append(f"cleared {len(store)}")
        await send({"type": "http.response.body", "body": b"done"})

    app = SessionMiddleware(raw_app, store=store, secret_key=SECRET)
    # No `with`: this bare app speaks no lifespan protocol.
    client = TestClient(app, backend=backend)
    late = client.get("/late")
    assert late.text == "done" and "set-cookie" not in late.headers
    assert "after the response started" in outcomes[-1]
    assert len(store) == 0

    early = client.get("/early")
    assert len(session_set_cookies(early)) == 1
    assert outcomes[-1] == "loaded True"
    # With a session already there, a late call just loads it.
    client.get("/late")
    assert outcomes[-1] == "loaded False"
    # A late clear deletes the data; the cookie stays but names nothing.
    late_clear = client.get("/late-clear")
    assert "set-cookie" not in late_clear.headers
    assert outcomes[-1] == "cleared 0"
    client.get("/late")
    assert "after the response started" in outcomes[-1]
    client.close()


def test_get_session_needs_the_middleware(backend: Backend) -> None:
    with pytest.raises(RuntimeError, match="SessionMiddleware"):
        get_session({"type": "http"})
    with pytest.raises(RuntimeError, match="SessionMiddleware"):
        get_session(Request({"type": "http", "headers": []}))

    async def no_middleware(request: Request) -> Response:
        try:
            get_session(request)
        except RuntimeError:
            return Response("missing", status_code=500)
        return Response("found")  # pragma: no cover - the middleware is absent

    with TestClient(Starlette(routes=[Route("/", no_middleware)]), backend=backend) as client:
        assert client.get("/").text == "missing"


@pytest.mark.anyio
async def test_websocket_and_lifespan_scopes_pass_through() -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def receive() -> ASGIMessage:
        return {"type": "lifespan.startup"}  # pragma: no cover - never called

    async def send(message: ASGIMessage) -> None:
        pass  # pragma: no cover - never called

    middleware = SessionMiddleware(app, secret_key=SECRET)
    for kind in ("websocket", "lifespan"):
        scope: Scope = {"type": kind, "headers": [(b"cookie", b"chatstream_session=x")]}
        await middleware(scope, receive, send)
        assert seen[-1] == (scope, receive, send)
        assert seen[-1][2] is send
        assert SESSION_SCOPE_KEY not in scope


# ---------------------------------------------------------------------- Session directly


@pytest.mark.anyio
async def test_session_save_without_data_does_nothing() -> None:
    store = MemoryStore()
    session = Session(store, session_id=new_session_id(), had_cookie=True)
    await session.save()  # not loaded yet
    assert await session.load() is None
    assert session.id is None  # the id named nothing
    await session.save()
    assert len(store) == 0


@pytest.mark.anyio
async def test_concurrent_requests_share_the_live_conversation() -> None:
    store = MemoryStore()
    first = Session(store, session_id=None, had_cookie=False)
    data = await first.load_or_create()
    assert first.id is not None
    second = Session(store, session_id=first.id, had_cookie=True)
    data.conversation.start_turn("hi", user_message_id="u", reply_id="a")
    other = await second.load()
    assert other is data
    with pytest.raises(TurnInFlightError):
        other.conversation.start_turn("again", user_message_id="u2", reply_id="a2")


# ---------------------------------------------------------------------- SessionData JSON


def test_session_data_json_round_trip_is_lossless() -> None:
    conversation = finished_conversation(2)
    conversation.start_regenerate(reply_id="a1-again")
    conversation.append_reply("better")
    conversation.finish_reply("stop")
    conversation.set_feedback("a1", is_like=False, data={"note": "meh"})
    conversation.set_feedback("a0", is_like=True)
    data = SessionData(
        conversation=conversation,
        generation_params={"temperature": 0.5, "top_k_value": 40, "nested": {"a": [1, 2]}},
        role="admin",
    )
    as_json = data.to_json()
    restored = SessionData.from_json(json.loads(json.dumps(as_json)))
    assert restored == data
    assert restored.conversation.find("a1").feedback is not None
    # The JSON is a snapshot: later changes to the live params do not reach it.
    data.generation_params["nested"]["a"].append(3)
    assert as_json["generation_params"]["nested"]["a"] == [1, 2]


def test_session_data_defaults_and_versions() -> None:
    data = SessionData()
    assert data.conversation == Conversation()
    assert data.generation_params == {} and data.role is None
    assert SessionData().generation_params is not data.generation_params
    assert SessionData.from_json(data.to_json()) == data
    minimal = {"version": 1, "conversation": Conversation().to_json()}
    assert SessionData.from_json(minimal) == data
    with pytest.raises(LocalProtocolError, match="version"):
        SessionData.from_json({**data.to_json(), "version": 99})


# ---------------------------------------------------------------------- stores

STORES = [MemoryStore, JSONMemoryStore]


@pytest.mark.anyio
@pytest.mark.parametrize("store_class", STORES)
async def test_store_round_trip_and_delete(store_class: type[MemoryStore]) -> None:
    store = store_class()
    data = SessionData(conversation=finished_conversation(1), generation_params={"t": 1})
    await store.save("s", data)
    loaded = await store.load("s")
    assert loaded == data
    assert await store.load("unknown") is None
    await store.delete("s")
    await store.delete("s")  # deleting twice is fine
    assert await store.load("s") is None
    assert len(store) == 0


@pytest.mark.anyio
async def test_json_store_keeps_copies_and_the_in_flight_state() -> None:
    store = JSONMemoryStore()
    data = SessionData(role="user")
    await store.save("s", data)
    data.role = "changed but not saved"
    loaded = await store.load("s")
    assert loaded is not None and loaded is not data
    assert loaded.role == "user"
    text = store._entries["s"].value.text
    assert json.loads(text) == SessionData(role="user").to_json()
    # A turn saved while in flight is seen by the next load: a second turn is refused.
    loaded.conversation.start_turn("hi", user_message_id="u", reply_id="a")
    await store.save("s", loaded)
    again = await store.load("s")
    assert again is not None and again.conversation.in_flight
    with pytest.raises(TurnInFlightError):
        again.conversation.start_turn("hi", user_message_id="u2", reply_id="a2")


@pytest.mark.anyio
@pytest.mark.parametrize("store_class", STORES)
async def test_sessions_expire_after_ttl_of_idle_time(store_class: type[MemoryStore]) -> None:
    clock = FakeClock()
    store = store_class(ttl_seconds=60, clock=clock)
    await store.save("a", SessionData())
    clock.now += 50
    assert await store.load("a") is not None  # a load counts as use
    clock.now += 59.9
    assert await store.load("a") is not None
    clock.now += 60  # exactly the ttl: gone
    assert await store.load("a") is None  # dropped lazily on access
    assert len(store._entries) == 0

    # Sweeps on save drop every expired session, oldest first, and stop at a live one.
    await store.save("b", SessionData())
    clock.now += 30
    await store.save("c", SessionData())
    clock.now += 30
    await store.save("d", SessionData())
    assert list(store._entries) == ["c", "d"]
    clock.now += 30
    await store.save("c", SessionData())  # a save counts as use
    clock.now += 30
    assert len(store) == 1  # __len__ sweeps too
    assert list(store._entries) == ["c"]
    clock.now += 60
    assert len(store) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("store_class", STORES)
async def test_least_recently_used_session_is_evicted(store_class: type[MemoryStore]) -> None:
    clock = FakeClock()
    store = store_class(max_sessions=3, clock=clock)
    for name in "abc":
        clock.now += 1
        await store.save(name, SessionData(role=name))
    clock.now += 1
    assert await store.load("a") is not None  # now b is the least recently used
    await store.save("c", SessionData(role="c2"))  # an update takes no new place
    assert len(store) == 3
    await store.save("d", SessionData())
    assert list(store._entries) == ["a", "c", "d"]
    assert await store.load("b") is None


@pytest.mark.anyio
@pytest.mark.parametrize("store_class", STORES)
async def test_eviction_spares_sessions_with_a_turn_in_flight(
    store_class: type[MemoryStore],
) -> None:
    store = store_class(max_sessions=2)
    busy = SessionData()
    busy.conversation.start_turn("hi", user_message_id="u", reply_id="r")
    await store.save("busy", busy)
    await store.save("idle", SessionData())
    await store.save("new", SessionData())
    assert list(store._entries) == ["busy", "new"]

    # When every session has a turn in flight, the least recently used goes anyway.
    also_busy = SessionData()
    also_busy.conversation.start_turn("hi", user_message_id="u", reply_id="r")
    await store.save("new", also_busy)
    await store.save("newest", SessionData())
    assert list(store._entries) == ["new", "newest"]


@pytest.mark.anyio
async def test_memory_store_sees_turns_started_after_the_save() -> None:
    store = MemoryStore(max_sessions=2)
    data = SessionData()
    await store.save("a", data)
    await store.save("b", SessionData())
    data.conversation.start_turn("hi", user_message_id="u", reply_id="r")  # live, not saved
    await store.save("c", SessionData())
    assert list(store._entries) == ["a", "c"]


@pytest.mark.anyio
@pytest.mark.parametrize("store_class", STORES)
async def test_a_flood_of_new_sessions_never_evicts_a_conversation(
    store_class: type[MemoryStore],
) -> None:
    # 10,050 cookie-less requests once evicted another user's conversation.
    store = store_class(max_sessions=10, max_new_sessions=3)
    for name in ("alice", "bob"):
        await store.save(name, SessionData(conversation=finished_conversation(2)))
    for n in range(1000):
        await store.save(f"flood-{n}", SessionData(generation_params={"temperature": 0.5}))
    assert len(store) == 2 + 3
    assert list(store._new) == ["flood-997", "flood-998", "flood-999"]
    for name in ("alice", "bob"):
        loaded = await store.load(name)
        assert loaded is not None and len(loaded.conversation.messages) == 4


@pytest.mark.anyio
@pytest.mark.parametrize("store_class", STORES)
async def test_new_sessions_go_before_conversations_when_the_store_is_full(
    store_class: type[MemoryStore],
) -> None:
    store = store_class(max_sessions=3, max_new_sessions=3)
    await store.save("talk-1", SessionData(conversation=finished_conversation(1)))
    await store.save("new-1", SessionData())
    await store.save("talk-2", SessionData(conversation=finished_conversation(1)))
    # Full: a new conversation takes the new session's place, not the oldest conversation's.
    await store.save("talk-3", SessionData(conversation=finished_conversation(1)))
    assert sorted(store._entries) == ["talk-1", "talk-2", "talk-3"]
    # With no new session left, the least recently used conversation goes.
    await store.save("talk-4", SessionData(conversation=finished_conversation(1)))
    assert sorted(store._entries) == ["talk-2", "talk-3", "talk-4"]
    # A new session whose first turn completes is a conversation from then on.
    first = SessionData()
    await store.save("becomes-talk", first)
    assert "becomes-talk" in store._new
    first.conversation = finished_conversation(1)
    await store.save("becomes-talk", first)
    assert "becomes-talk" not in store._new
    # Expiry and deletion forget it in both orders.
    await store.delete("becomes-talk")
    await store.save("new-2", SessionData())
    await store.delete("new-2")
    assert list(store._new) == []


@pytest.mark.anyio
@pytest.mark.parametrize("store_class", STORES)
async def test_a_session_is_kept_within_its_byte_limit(store_class: type[MemoryStore]) -> None:
    store = store_class(max_session_bytes=16 * 1024, max_history_messages=None)
    conversation = Conversation()
    for n in range(40):
        conversation.start_turn(
            f"question {n} " + "長" * 300, user_message_id=f"u{n}", reply_id=f"a{n}"
        )
        conversation.append_reply(f"answer {n} " + "x" * 200)
        conversation.finish_reply("stop")
    data = SessionData(conversation=conversation, generation_params={"stop": ["a" * 256] * 16})
    data.conversation.set_feedback("a39", is_like=True, data={"note": "n" * 1000})
    assert session_bytes(data) > 16 * 1024
    await store.save("s", data)
    loaded = await store.load("s")
    assert loaded is not None
    assert session_bytes(loaded) <= 16 * 1024
    messages = loaded.conversation.messages
    # Whole exchanges, oldest first: the newest stays, with its feedback.
    assert messages[-1].id == "a39" and messages[-1].feedback is not None
    assert messages[0].role is Role.USER
    assert len(messages) % 2 == 0 and len(messages) < 80


@pytest.mark.anyio
@pytest.mark.parametrize("store_class", STORES)
async def test_a_long_conversation_shortens_before_another_goes(
    store_class: type[MemoryStore],
) -> None:
    store = store_class(max_session_bytes=8 * 1024, max_history_messages=None)
    data = SessionData(conversation=finished_conversation(2))  # "1", the least recently used
    data.new_conversation()
    data.conversation = finished_conversation(2)
    data.new_conversation()
    data.conversation = finished_conversation(30)
    for message in data.conversation.messages:
        message.content += "z" * 300
    assert session_bytes(data) > 8 * 1024
    await store.save("s", data)
    loaded = await store.load("s")
    assert loaded is not None and session_bytes(loaded) <= 8 * 1024
    # The long one lost its oldest exchanges; the small ones are whole.
    assert list(loaded.conversations) == ["1", "2", "3"]
    assert [len(loaded.conversations[k].messages) for k in ("1", "2")] == [4, 4]
    assert 2 <= len(loaded.conversation.messages) < 60
    assert loaded.conversation.messages[-1].id == "a29"
    # When no conversation can shorten, the least recently used other one goes.
    for key in ("1", "2", "3"):
        loaded.conversations[key].messages[-2].content = "y" * 3000  # its newest question
    await store.save("s", loaded)
    again = await store.load("s")
    assert again is not None and list(again.conversations) == ["2", "3"]
    assert [len(c.messages) for c in again.conversations.values()] == [2, 2]


def test_a_turn_s_save_keeps_what_other_requests_saved() -> None:
    turn = SessionData(conversation=finished_conversation(1))
    turn.conversation.start_turn("q", user_message_id="uq", reply_id="aq")
    turn.conversation.finish_reply("stop")
    # Meanwhile, in the store: feedback, a title, a new conversation chosen as current.
    latest = SessionData(conversation=finished_conversation(1), role="dev")
    latest.conversation.set_feedback("a0", is_like=True)
    latest.conversation.title = "named"
    latest.new_conversation()
    turn.merge_turn(latest, "1", current_before="1")
    assert turn.current_id == "2" and turn.role == "dev"
    first = turn.conversations["1"]
    assert [m.id for m in first.messages] == ["u0", "a0", "uq", "aq"]
    assert first.title == "named" and first.find("a0").feedback is not None
    # Nobody chose another conversation: the turn's stays current.
    mine = SessionData(conversation=finished_conversation(1))
    mine.new_conversation()
    mine.current_id = "1"
    other = SessionData.from_json(mine.to_json())
    other.current_id = "2"
    mine.merge_turn(other, "1", current_before="2")
    assert mine.current_id == "1"


@pytest.mark.anyio
async def test_the_last_exchange_is_never_trimmed_away() -> None:
    store = MemoryStore(max_session_bytes=1024)
    data = SessionData(conversation=finished_conversation(1))
    data.conversation.messages[0].content = "y" * 5000
    await store.save("s", data)
    loaded = await store.load("s")
    assert loaded is not None and len(loaded.conversation.messages) == 2


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": -1.0}, "ttl_seconds"),
        ({"ttl_seconds": float("nan")}, "ttl_seconds"),
        ({"max_sessions": 0}, "max_sessions"),
        ({"max_history_messages": 0}, "max_history_messages"),
        ({"max_new_sessions": 0}, "max_new_sessions"),
        ({"max_session_bytes": 1023}, "max_session_bytes"),
    ],
)
def test_invalid_store_options_are_refused(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        MemoryStore(**options)
    assert excinfo.value.option == option


def test_store_defaults() -> None:
    store = MemoryStore()
    assert store.ttl_seconds == 24 * 60 * 60
    assert store.max_sessions == 10_000
    assert store.max_history_messages == 200
    assert store.max_new_sessions == 1_000
    assert store.max_session_bytes == 256 * 1024
    assert MemoryStore(max_sessions=10).max_new_sessions == 10


# ---------------------------------------------------------------------- history trimming


async def saved(conversation: Conversation, limit: int | None) -> Conversation:
    store = MemoryStore(max_history_messages=limit)
    await store.save("s", SessionData(conversation=conversation))
    return conversation


def ids(messages: list[Message]) -> list[str]:
    return [m.id for m in messages]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("limit", "kept"),
    [
        (None, ["u0", "a0", "u1", "a1", "u2", "a2"]),
        (200, ["u0", "a0", "u1", "a1", "u2", "a2"]),
        (6, ["u0", "a0", "u1", "a1", "u2", "a2"]),
        (5, ["u1", "a1", "u2", "a2"]),  # whole pairs only
        (4, ["u1", "a1", "u2", "a2"]),
        (3, ["u2", "a2"]),
        (2, ["u2", "a2"]),
        (1, ["u2", "a2"]),  # never the newest exchange
    ],
)
async def test_history_is_trimmed_in_whole_pairs(limit: int | None, kept: list[str]) -> None:
    conversation = await saved(finished_conversation(3), limit)
    assert ids(conversation.messages) == kept
    if kept:
        assert conversation.messages[0].role is Role.USER


@pytest.mark.anyio
async def test_history_is_not_trimmed_while_a_turn_is_in_flight() -> None:
    conversation = finished_conversation(3)
    conversation.start_turn("more", user_message_id="u3", reply_id="a3")
    await saved(conversation, 2)
    assert len(conversation.messages) == 8
    conversation.finish_reply("stop")
    await saved(conversation, 2)
    assert ids(conversation.messages) == ["u3", "a3"]


@pytest.mark.anyio
async def test_trimming_drops_a_stray_leading_reply_and_stale_archived_replies() -> None:
    conversation = finished_conversation(3)
    conversation.messages.insert(0, Message(id="stray", role=Role.ASSISTANT, content="?"))
    # Regenerate the last reply five times: five archived replies to u2, and one to u0.
    conversation.archived.append(
        Message(id="old-a0", role=Role.ASSISTANT, content="x", in_reply_to="u0")
    )
    for n in range(5):
        conversation.start_regenerate(reply_id=f"a2-{n}")
        conversation.finish_reply("stop")
    await saved(conversation, 6)
    assert ids(conversation.messages) == ["u0", "a0", "u1", "a1", "u2", "a2-4"]
    await saved(conversation, 4)
    assert ids(conversation.messages) == ["u1", "a1", "u2", "a2-4"]
    # old-a0 answered a dropped message; of the rest only the newest four are kept.
    assert ids(conversation.archived) == ["a2-0", "a2-1", "a2-2", "a2-3"]
    assert all(m.status is MessageStatus.COMPLETE for m in conversation.archived)
    # Feedback on a kept archived reply still finds its place.
    assert ids(conversation.history_until("a2-3")) == ["u1", "a1", "u2", "a2-3"]


# ---------------------------------------------------------------------- the module itself


@pytest.mark.parametrize("module", [sessions_module, session_stores_module])
def test_sessions_module_imports_no_event_loop(module: Any) -> None:
    path = pathlib.Path(module.__file__ or "")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module)
    roots = {name.split(".")[0] for name in imported}
    assert roots.isdisjoint({"asyncio", "trio", "sniffio", "uvloop"}), roots
    # `from __future__ import annotations` comes first, right after the docstring.
    first = tree.body[1]
    assert isinstance(first, ast.ImportFrom) and first.module == "__future__"


def test_memory_stores_satisfy_the_protocol() -> None:
    # mypy checks the assignment; the loop only keeps the test honest at run time.
    stores: list[SessionStore] = [MemoryStore(), JSONMemoryStore(), CountingStore()]
    for store in stores:
        for name in ("load", "save", "delete"):
            assert callable(getattr(store, name))


def test_a_signature_spelled_another_way_is_refused() -> None:
    # The last character of 32 bytes in base64 has two unused bits: flipping them spells
    # the same bytes, which itsdangerous' decoder would accept.
    signer = SessionCookie(SECRET)
    for _ in range(50):
        good = signer.sign(new_session_id())
        head, last = good[:-1], good[-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        index = alphabet.index(last)
        assert index % 4 == 0
        for spare in (1, 2, 3):
            assert signer.unsign(head + alphabet[index + spare]) is None
        assert signer.unsign(good) is not None
