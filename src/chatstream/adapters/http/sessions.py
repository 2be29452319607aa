"""Per-browser sessions: a signed random id in a cookie, the state on the server.

The state of a session (:class:`SessionData`: the conversation, per-session generation
params, the client role) lives in a :class:`SessionStore` (see :mod:`.session_stores`), keyed
by a random session id. The browser only holds ``<session_id>.<timestamp>.<signature>`` in an
HttpOnly cookie, signed with itsdangerous' timestamped signer (HMAC-SHA256): a cookie older
than the session TTL is refused even if it leaked, and one in use is signed again as it ages.

Written here rather than taken from a library: Starlette's ``SessionMiddleware`` keeps the
whole state in the cookie (a conversation does not fit in 4 KB, and the server must own it),
and it sets the cookie on every response; this one keeps the state on the server and sets a
cookie only when a session is created, refreshed or cleared.

:class:`SessionMiddleware` is a plain ASGI middleware. It gives each HTTP request a
:class:`Session` (read it with :func:`get_session`) and creates nothing by itself: a session
exists only once a handler calls :meth:`Session.load_or_create`, so cookie-less requests
(crawlers, health checks, a flood of GETs) cost no memory. Its cookie is *appended* to the
response headers, next to any the app sets.

Compared with the original's session middleware: no hard-coded secret, ``secure`` means what it
says, idle sessions expire by last use (not by creation), the memory store is bounded (LRU), and
the history kept per session is bounded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from itsdangerous import BadSignature, TimestampSigner
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstream.core import ConfigError

from .session_stores import MemoryStore, SessionData, SessionStore, StoreUnavailable

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "DEFAULT_SESSION_TTL",
    "SESSION_SCOPE_KEY",
    "Session",
    "SessionCookie",
    "SessionMiddleware",
    "get_session",
    "new_session_id",
]

#: Where :class:`SessionMiddleware` puts the request's :class:`Session` in the ASGI scope.
SESSION_SCOPE_KEY = "chatstream.session"

logger = logging.getLogger("chatstream")


# ---------------------------------------------------------------------- cookies

_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_PATH = re.compile(r"/[\x20-\x3a\x3c-\x7e]*")
# A signed value is ``<id>.<timestamp>.<signature>``, each part unpadded url-safe base64 (the
# signature: 32 bytes of HMAC-SHA256, whose 43rd character carries 2 unused bits that must be
# 0). Anything else is not ours and is refused before any hashing: also the other spellings of
# the same signature that itsdangerous' lenient base64 decoding would accept.
_COOKIE_VALUE = re.compile(
    r"[A-Za-z0-9_-]{1,128}\.[A-Za-z0-9_-]{1,12}\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"
)
#: Seconds a cookie's issue time may lie in the future: the clocks of several nodes differ a
#: little, and a cookie issued by one must work on the next.
CLOCK_SKEW_SECONDS = 60.0
#: Sessions live this long without use when the store does not say (24 hours).
DEFAULT_SESSION_TTL = 24 * 60 * 60.0


def new_session_id() -> str:
    """A fresh random session id: 256 bits, url-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


class _ClockedSigner(TimestampSigner):
    """itsdangerous' timestamped signer, reading the time from a given clock."""

    def __init__(self, key: bytes, clock: Callable[[], float]) -> None:
        super().__init__(
            key, salt="chatstream.session", key_derivation="hmac", digest_method=hashlib.sha256
        )
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


class SessionCookie:
    """Signs session ids, with the time of signing, into cookie values, and checks them.

    Built on :class:`itsdangerous.TimestampSigner` (HMAC-SHA256, key derived with HMAC and
    the salt ``chatstream.session``): the value is ``<session_id>.<timestamp>.<signature>``.
    A value is refused when it is malformed, badly signed, or older than ``max_age_seconds``
    (the age is checked here rather than by itsdangerous, which also refuses a timestamp one
    second in the future: see :data:`CLOCK_SKEW_SECONDS`).

    Args:
        secret_key: the signing key; a str is encoded as UTF-8. Every process that serves
            the same sessions needs the same key.
        max_age_seconds: refuse values signed longer ago than this (None: never).
        clock: wall-clock seconds (cookies cross processes and restarts, so not monotonic).

    Raises:
        ConfigError: the key is empty, or the age is not positive.
    """

    def __init__(
        self,
        secret_key: str | bytes,
        *,
        max_age_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
        if not key:
            raise ConfigError("secret_key", "must not be empty")
        if max_age_seconds is not None and not max_age_seconds > 0:
            raise ConfigError("session_ttl", f"must be positive, got {max_age_seconds!r}")
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._signer = _ClockedSigner(key, clock)

    def sign(self, session_id: str) -> str:
        """The cookie value for this session id, signed now."""
        return self._signer.sign(session_id).decode("ascii")

    def unsign(self, value: str) -> str | None:
        """The session id in a cookie value, or None if it is malformed, badly signed or
        too old."""
        read = self.read(value)
        return None if read is None else read[0]

    def read(self, value: str) -> tuple[str, float] | None:
        """``(session_id, age_seconds)`` of a valid cookie value, else None."""
        if not _COOKIE_VALUE.fullmatch(value):
            return None
        try:
            session_id, signed_at = self._signer.unsign(value, return_timestamp=True)
        except BadSignature:  # also a bad or missing timestamp
            return None
        age = self._clock() - signed_at.timestamp()
        too_old = self.max_age_seconds is not None and age > self.max_age_seconds
        if too_old or age < -CLOCK_SKEW_SECONDS:
            return None
        return session_id.decode("ascii"), max(age, 0.0)


# ---------------------------------------------------------------------- per request


class Session:
    """One request's handle on its browser session. Made by :class:`SessionMiddleware`;
    get it with :func:`get_session`. It belongs to one request: do not share it.

    Nothing is created until :meth:`load_or_create` is called.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        session_id: str | None,
        had_cookie: bool,
        cookie_age: float | None = None,
    ) -> None:
        self._store = store
        self._id = session_id
        self._had_cookie = had_cookie
        #: Seconds since the request's valid cookie was signed (None without one).
        self.cookie_age = cookie_age
        self._data: SessionData | None = None
        self._loaded = False
        self._is_new = False
        self._response_started = False
        #: What the response must do with the cookie: set it (new session), expire it, or
        #: nothing.
        self._cookie_action: Literal["set", "expire"] | None = None

    @property
    def id(self) -> str | None:
        """The session id: from a validly signed cookie, or the one just created.

        None when there is no session, and after :meth:`load` found none for the cookie's id
        (unknown or expired).
        """
        return self._id

    @property
    def store(self) -> SessionStore:
        """Where this session's data lives."""
        return self._store

    @property
    def is_new(self) -> bool:
        """True when :meth:`load_or_create` created the session in this request."""
        return self._is_new

    async def load(self) -> SessionData | None:
        """The session's data, or None without a valid cookie or when it has expired.

        The store is asked once per request; later calls return the same object.
        """
        if not self._loaded:
            data = None if self._id is None else await self._store.load(self._id)
            if data is None:
                self._id = None
            self._data, self._loaded = data, True
        return self._data

    async def reload(self) -> SessionData | None:
        """Read the session's data from the store again (another process may have saved it
        since :meth:`load`); keeps the loaded data when the store no longer has it."""
        if self._id is not None and not self._is_new:
            data = await self._store.load(self._id)
            if data is not None:
                self._data, self._loaded = data, True
        return self._data

    async def load_or_create(self) -> SessionData:
        """The session's data; without one, a new session is created, saved, and its cookie
        is set on the response.

        Raises:
            RuntimeError: a session must be created but the response has already started,
                so its cookie could not reach the client.
        """
        data = await self.load()
        if data is not None:
            return data
        if self._response_started:
            raise RuntimeError(
                "cannot create a session after the response started: its cookie could not be "
                "sent; call load_or_create() before the response"
            )
        session_id, data = new_session_id(), SessionData()
        await self._store.save(session_id, data)
        self._id, self._data, self._is_new, self._cookie_action = session_id, data, True, "set"
        return data

    async def save(self) -> None:
        """Save the loaded or created data; does nothing when there is none."""
        if self._id is None or self._data is None:
            return
        await self._store.save(self._id, self._data)

    async def clear(self) -> None:
        """Delete the session's data on the server and expire its cookie in the browser.

        After the response has started the cookie stays, but it names no session any more.
        """
        session_id = self._id
        self._id, self._data, self._loaded, self._is_new = None, None, True, False
        # Expire only what the browser has: a session created in this request never left.
        self._cookie_action = "expire" if self._had_cookie else None
        if session_id is not None:
            await self._store.delete(session_id)


async def _store_unavailable(error: StoreUnavailable, send: Send) -> None:
    body = json.dumps(
        {
            "success": False,
            "error": "session_store_unavailable",
            "message": "the session store cannot be reached; try again shortly",
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(error.retry_after).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def get_session(conn: Mapping[str, Any]) -> Session:
    """The :class:`Session` of a request (a Starlette ``Request``) or an ASGI scope.

    Raises:
        RuntimeError: :class:`SessionMiddleware` is not installed in front of the app.
    """
    session = conn.get(SESSION_SCOPE_KEY)
    if not isinstance(session, Session):
        raise RuntimeError(
            "no session in this request: add chatstream.adapters.sessions.SessionMiddleware "
            "to the app (Middleware(SessionMiddleware, secret_key=...))"
        )
    return session


# ---------------------------------------------------------------------- middleware


class SessionMiddleware:
    """ASGI middleware that gives every HTTP request a :class:`Session`.

    A plain ASGI middleware (not ``BaseHTTPMiddleware``): the body streams through untouched
    and cancellation reaches the app. WebSocket and lifespan scopes pass through.

    Args:
        app: the ASGI app to wrap.
        store: where session data lives; a new :class:`MemoryStore` by default.
        secret_key: the cookie signing key. Without one a random key is made and a warning
            logged: sessions then end with the process and are not shared between workers.
        cookie_name: the cookie's name.
        secure: send the cookie over HTTPS only (``Secure``). Set it in production.
        same_site: the cookie's ``SameSite`` attribute.
        path: the cookie's ``Path``.
        max_age: the cookie's ``Max-Age`` in the browser, in seconds from when it was last
            set; None makes a browser-session cookie. The server-side limit is
            ``session_ttl``.
        session_ttl: how long a session lives without use, in seconds; a cookie signed longer
            ago than that is refused whatever the store says. Default: the store's
            ``ttl_seconds`` (24 hours for a store without one). A cookie in use is signed
            again once it is a minute old (or a tenth of the TTL, if less), so an active
            session keeps a fresh cookie.
        clock: wall-clock seconds, for the cookie's issue time (tests give a fake one).

    Raises:
        ConfigError: an invalid cookie name, path, ``same_site``, ``max_age``,
            ``session_ttl`` or an empty key; ``same_site="none"`` without ``secure``
            (browsers refuse it).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: SessionStore | None = None,
        secret_key: str | bytes | None = None,
        cookie_name: str = "chatstream_session",
        secure: bool = False,
        same_site: Literal["lax", "strict", "none"] = "lax",
        path: str = "/",
        max_age: int | None = None,
        session_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _COOKIE_NAME.fullmatch(cookie_name):
            raise ConfigError("cookie_name", f"not a valid cookie name: {cookie_name!r}")
        if not _COOKIE_PATH.fullmatch(path):
            raise ConfigError("path", f"must start with / and hold no ';': {path!r}")
        if same_site not in ("lax", "strict", "none"):
            raise ConfigError("same_site", f"must be 'lax', 'strict' or 'none': {same_site!r}")
        if same_site == "none" and not secure:
            raise ConfigError("same_site", "'none' needs secure=True (browsers refuse it)")
        if max_age is not None and max_age < 1:
            raise ConfigError("max_age", f"must be at least 1 or None, got {max_age!r}")
        if secret_key is None:
            secret_key = secrets.token_bytes(32)
            logger.warning(
                "SessionMiddleware: no secret_key given, so a random one is used: sessions "
                "will not survive a restart and will not be shared between worker processes; "
                "pass secret_key for multi-process use"
            )
        self.app = app
        self.store: SessionStore = MemoryStore() if store is None else store
        self.cookie_name = cookie_name
        ttl = session_ttl
        if ttl is None:
            ttl = float(getattr(self.store, "ttl_seconds", DEFAULT_SESSION_TTL))
        if not ttl > 0:
            raise ConfigError("session_ttl", f"must be positive, got {ttl!r}")
        self.session_ttl = ttl
        # A cookie used within `_refresh_after` of its signing is not signed again, so it may
        # be that much older than the session's last use: the limit allows for it.
        self._refresh_after = min(60.0, ttl / 10)
        self._cookie = SessionCookie(
            secret_key, max_age_seconds=ttl + self._refresh_after, clock=clock
        )
        attributes = [f"Path={path}", "HttpOnly", f"SameSite={same_site.capitalize()}"]
        if secure:
            attributes.append("Secure")
        self._attributes = "; ".join(attributes)
        self._max_age = max_age

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session_id, age, had_cookie = self._read_cookie(scope)
        session = Session(self.store, session_id=session_id, had_cookie=had_cookie, cookie_age=age)
        scope[SESSION_SCOPE_KEY] = session

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                session._response_started = True
                header = self._set_cookie_header(session)
                if header is not None:
                    # A new message and a new list: the app's own headers stay as they are.
                    headers = [*message.get("headers", ()), (b"set-cookie", header)]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_cookie)
        except StoreUnavailable as error:
            # The store is down (a Redis outage): nothing was read or written, so the client
            # may simply try again later. After the response started, only the server can
            # end it.
            if session._response_started:
                raise
            logger.warning("session store unavailable: %s", error)
            await _store_unavailable(error, send)

    def _read_cookie(self, scope: Scope) -> tuple[str | None, float | None, bool]:
        # Every cookie of this name counts (several Cookie headers, or one per path): the
        # first validly signed one wins. Malformed ones are no session, never an error.
        found = False
        for name, value in scope["headers"]:
            if name != b"cookie":
                continue
            for pair in value.decode("latin-1").split(";"):
                key, sep, cookie_value = pair.strip().partition("=")
                if not sep or key != self.cookie_name:
                    continue
                found = True
                read = self._cookie.read(cookie_value)
                if read is not None:
                    return read[0], read[1], True
        return None, None, found

    def _set_cookie_header(self, session: Session) -> bytes | None:
        if session._cookie_action == "set" or self._needs_refresh(session):
            assert session.id is not None
            value = f"{self.cookie_name}={self._cookie.sign(session.id)}; {self._attributes}"
            if self._max_age is not None:
                value += f"; Max-Age={self._max_age}"
        elif session._cookie_action == "expire":
            value = (
                f"{self.cookie_name}=; {self._attributes}; Max-Age=0; "
                "Expires=Thu, 01 Jan 1970 00:00:00 GMT"
            )
        else:
            return None
        return value.encode("latin-1")

    def _needs_refresh(self, session: Session) -> bool:
        # A session this request found (and so kept alive in the store) gets a newly signed
        # cookie once its cookie is old enough to matter.
        return (
            session._cookie_action is None
            and session._data is not None
            and session.cookie_age is not None
            and session.cookie_age >= self._refresh_after
        )
