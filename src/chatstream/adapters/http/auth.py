"""Bearer credentials: the API key of the OpenAI-compatible routes, and the token of
``/metrics`` (:func:`guarded_by_token`: a 401 ``invalid_token`` in chatstream's own error
shape without it).

:class:`ApiKeyMiddleware` asks every request under ``/v1/`` (whatever route serves it, those
added later included) for ``Authorization: Bearer <key>``, as vLLM's ``--api-key`` does, and
answers any other with a 401 in OpenAI's error shape (code ``invalid_api_key``) before a
handler runs or a body is read. The other paths (``/health``, ``/metrics``, the web UI, the
original API, ``/tokenize``...) are left to their own rules, as are CORS preflight requests
(``OPTIONS``). Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .common import error_response, may_have_body, route_path

__all__ = ["ApiKeyMiddleware", "bearer_token", "guarded_by_token", "presents_token"]

#: The paths an API key guards: these and everything under them.
_KEYED_PREFIX = "/v1"


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, else None."""
    if authorization is None:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None


def presents_token(authorization: str | None, expected: str) -> bool:
    """True when the header carries ``expected`` as its bearer credential (compared in
    constant time, so that the time taken says nothing of how much of it matched)."""
    presented = bearer_token(authorization)
    if presented is None:
        return False
    # Header values arrive decoded as Latin-1: back to the bytes the client sent.
    return hmac.compare_digest(presented.encode("latin-1", "replace"), expected.encode())


def _unauthorized(message: str, *, close: bool) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"}
    if close:
        # The body is never read, so the connection cannot carry another request.
        headers["Connection"] = "close"
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    return JSONResponse(body, status_code=401, headers=headers)


def _is_keyed(path: str) -> bool:
    return path == _KEYED_PREFIX or path.startswith(_KEYED_PREFIX + "/")


class ApiKeyMiddleware:
    """ASGI middleware: requests under ``/v1/`` need ``Authorization: Bearer <api_key>``.

    Args:
        app: the app it guards.
        api_key: the key; None or "" guards nothing.
    """

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.api_key is None
            or scope["type"] != "http"
            or scope.get("method") == "OPTIONS"
            or not _is_keyed(route_path(scope))
        ):
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        if presents_token(authorization, self.api_key):
            await self.app(scope, receive, send)
            return
        message = (
            "a valid API key is needed: send 'Authorization: Bearer <key>'"
            if authorization is None
            else "the API key is not valid"
        )
        await _unauthorized(message, close=may_have_body(scope))(scope, receive, send)


def guarded_by_token(
    token: str, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` behind ``Authorization: Bearer <token>``: a 401 without it (``/metrics``
    with a token of its own)."""

    async def guarded(request: Request) -> Response:
        if presents_token(request.headers.get("authorization"), token):
            return await handler(request)
        message = "a valid token is needed: send 'Authorization: Bearer <token>'"
        return error_response(401, "invalid_token", message, {"WWW-Authenticate": "Bearer"})

    guarded.__name__ = getattr(handler, "__name__", "guarded")
    return guarded


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
