"""Per-browser sessions: a signed random id in a cookie, the state on the server.

The state of a session (:class:`SessionData`: the conversation, per-session generation
params, the client role) lives in a :class:`SessionStore` (see :mod:`.session_stores`), keyed
by a random session id. The
browser only holds ``<session_id>.<signature>`` in an HttpOnly cookie, signed with HMAC-SHA256.

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

import base64
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstream.core import ConfigError

from .session_stores import MemoryStore, SessionData, SessionStore

__all__ = [
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

# A session id is url-safe base64; a signature is 32 bytes of HMAC-SHA256 in unpadded
# url-safe base64 (43 characters). Anything else is not ours.
_COOKIE_VALUE = re.compile(r"([A-Za-z0-9_-]{1,128})\.([A-Za-z0-9_-]{43})")
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_PATH = re.compile(r"/[\x20-\x3a\x3c-\x7e]*")


def new_session_id() -> str:
    """A fresh random session id: 256 bits, url-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


class SessionCookie:
    """Signs session ids into cookie values and checks them.

    The value is ``<session_id>.<signature>``, where the signature is
    ``base64url(HMAC-SHA256(secret_key, session_id))`` without padding.

    Args:
        secret_key: the signing key; a str is encoded as UTF-8. Every process that serves
            the same sessions needs the same key.

    Raises:
        ConfigError: the key is empty.
    """

    def __init__(self, secret_key: str | bytes) -> None:
        key = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
        if not key:
            raise ConfigError("secret_key", "must not be empty")
        self._key = key

    def sign(self, session_id: str) -> str:
        """The cookie value for this session id."""
        return f"{session_id}.{self._signature(session_id)}"

    def unsign(self, value: str) -> str | None:
        """The session id in a cookie value, or None if it is malformed or badly signed."""
        match = _COOKIE_VALUE.fullmatch(value)
        if match is None:
            return None
        session_id, signature = match.groups()
        if not hmac.compare_digest(signature, self._signature(session_id)):
            return None
        return session_id

    def _signature(self, session_id: str) -> str:
        digest = hmac.new(self._key, session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# ---------------------------------------------------------------------- per request


class Session:
    """One request's handle on its browser session. Made by :class:`SessionMiddleware`;
    get it with :func:`get_session`. It belongs to one request: do not share it.

    Nothing is created until :meth:`load_or_create` is called.
    """

    def __init__(self, store: SessionStore, *, session_id: str | None, had_cookie: bool) -> None:
        self._store = store
        self._id = session_id
        self._had_cookie = had_cookie
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
        max_age: the cookie's lifetime in seconds from the session's creation; None makes a
            browser-session cookie. The store's idle expiry applies either way.

    Raises:
        ConfigError: an invalid cookie name, path, ``same_site``, ``max_age`` or an empty
            key; ``same_site="none"`` without ``secure`` (browsers refuse it).
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
        self._cookie = SessionCookie(secret_key)
        attributes = [f"Path={path}", "HttpOnly", f"SameSite={same_site.capitalize()}"]
        if secure:
            attributes.append("Secure")
        self._attributes = "; ".join(attributes)
        self._max_age = max_age

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session_id, had_cookie = self._read_cookie(scope)
        session = Session(self.store, session_id=session_id, had_cookie=had_cookie)
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

        await self.app(scope, receive, send_with_cookie)

    def _read_cookie(self, scope: Scope) -> tuple[str | None, bool]:
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
                session_id = self._cookie.unsign(cookie_value)
                if session_id is not None:
                    return session_id, True
        return None, found

    def _set_cookie_header(self, session: Session) -> bytes | None:
        if session._cookie_action == "set":
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
