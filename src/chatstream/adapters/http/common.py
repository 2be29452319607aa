"""What every chatstream HTTP endpoint shares: options, JSON errors, bodies, roles, sessions.

The body reader is written here rather than taken from Starlette: ``Request.json()`` reads the
whole body first, whatever its size, while :func:`read_json_object` refuses a declared or
streamed body past ``max_body_bytes`` as soon as it knows, and answers in chatstream's JSON
error shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Scope

from chatstream.core import ConfigError
from chatstream.core.roles import ClientRole, ClientRoles

from .session_stores import SessionData, StoreUnavailable
from .sessions import Session, get_session

__all__ = [
    "AUTH_HEADER",
    "BadRequest",
    "HttpOptions",
    "RequestContext",
    "check_json_value",
    "error_response",
    "forbidden",
    "may_have_body",
    "parse_rate_limit",
    "read_json_object",
    "route_path",
]

#: The header an agent (a program, not a browser) sends its credential in.
AUTH_HEADER = "x-chatstream-auth-header"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpOptions:
    """Limits and timings of the HTTP layer."""

    #: Largest request body accepted (bytes); more is a 413.
    max_body_bytes: int = 256 * 1024
    #: Longest ``user_input`` accepted (characters); more is a 400.
    max_input_chars: int = 16_000
    #: Seconds between SSE keep-alive comments while a request waits or runs.
    keepalive_sec: float = 15.0
    #: Seconds that running streams get to finish when the server drains for shutdown.
    drain_timeout_sec: float = 30.0
    #: Seconds a request body may take, from its first byte read to its last; more is a
    #: 408 and the connection is closed (a body trickled in a byte at a time).
    body_timeout_sec: float = 30.0
    #: Deepest nesting of arrays and objects accepted in a JSON body; deeper is a 400.
    max_json_depth: int = 32
    #: Largest ``form_data`` of one ``/set_feedback``, in bytes of its JSON; more is a 400.
    max_feedback_bytes: int = 4096
    #: ``/health`` says 503 "degraded" after this many requests in a row failed in the model
    #: (with no request ending well in between).
    degraded_after_failures: int = 8
    #: Requests one client address may make, as a rate (``"60/minute"``, several joined
    #: with ``;``); more is a 429 with ``Retry-After``. None: no limit.
    rate_limit_per_address: str | None = None
    #: The same budget for each session (each browser); None: no limit.
    rate_limit_per_session: str | None = None
    #: Seconds a ``/chat_stream`` turn streamed as Server-Sent Events goes on after its
    #: client has gone, for a reconnect with ``Last-Event-ID`` to resume it; 0 cancels it
    #: at once. (Plain-text and OpenAI streams cannot be resumed: they stop at once.)
    resume_grace_sec: float = 5.0
    #: Seconds a finished stream's events stay for a late reconnect (then its reply is in
    #: the history only).
    resume_keep_sec: float = 60.0

    def __post_init__(self) -> None:
        for name in ("resume_grace_sec", "resume_keep_sec"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ConfigError(name, f"must be a number of seconds >= 0, not {value!r}")
        parse_rate_limit(self.rate_limit_per_address, "rate_limit_per_address")
        parse_rate_limit(self.rate_limit_per_session, "rate_limit_per_session")


def parse_rate_limit(value: str | None, field: str) -> tuple[RateLimitItem, ...]:
    """The limits of a rate string (``"60/minute"``, ``"10/second;300/hour"``); none for
    None or "".

    Raises:
        ConfigError: not a rate string; the message names ``field``.
    """
    if not value:
        return ()
    try:
        items = tuple(parse_many(value))
    except ValueError:
        items = ()
    if not items or any(item.amount < 1 for item in items):
        raise ConfigError(
            field, f"must be a rate such as '60/minute' or '10/second;300/hour', not {value!r}"
        )
    return items


class BadRequest(Exception):
    """A request the client must fix; carries its status and JSON body."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.message)


def route_path(scope: Scope) -> str:
    """The request's path within the app: under a Mount, ``path`` still starts with the
    mount point (``root_path``), which is taken off."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def may_have_body(scope: Scope) -> bool:
    """True when the request says it sends a body (a refusal that leaves it unread must
    then close the connection)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def error_response(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON body of every error: a code for programs and a sentence for people."""
    return JSONResponse(
        {"success": False, "error": error, "message": message},
        status_code=status,
        headers=dict(headers or {}),
    )


def forbidden(hint: str | None = None) -> JSONResponse:
    # The original's body, so that clients written for it keep working.
    body: dict[str, Any] = {
        "success": False,
        "error": "forbidden",
        "message": "Forbidden",
        "detail": "Denied on role layer.",
    }
    if hint:
        body["hint"] = hint
    return JSONResponse(body, status_code=403)


async def read_json_object(
    request: Request, body: bytes | str | None, options: HttpOptions
) -> dict[str, Any]:
    """The request's JSON object, within the size limit.

    Args:
        body: a body the caller already read (the original's "interception"), or None to
            read it here.

    Raises:
        BadRequest: too large (413), not JSON or not an object (400).
    """
    if body is None:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > options.max_body_bytes:
            raise _too_large(options)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > options.max_body_bytes:
                raise _too_large(options)
            chunks.append(chunk)
        body = b"".join(chunks)
    elif len(body) > options.max_body_bytes:
        raise _too_large(options)
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(400, "invalid_json", f"the body is not valid JSON: {error}") from None
    except RecursionError:
        # The parser's own recursion limit, far deeper than ours.
        raise _too_deep(options) from None
    if not isinstance(parsed, dict):
        raise BadRequest(400, "invalid_json", "the body must be a JSON object")
    check_json_value(parsed, options)
    return parsed


def check_json_value(value: object, options: HttpOptions) -> None:
    """Refuse what JSON allows but nothing downstream can hold: nesting deeper than
    ``max_json_depth``, and strings (keys included) with lone surrogates (``"\\ud800"``
    parses, but no tokenizer, store or JSON response can encode it).

    Raises:
        BadRequest: 400 ``json_too_deep`` or ``invalid_code_point``, naming the field.
    """
    # Iterative: a recursive walk would be its own RecursionError.
    stack: list[tuple[str, object, int]] = [("", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(f"the field {path!a}", item)
        elif isinstance(item, dict | list):
            if depth >= options.max_json_depth:
                raise _too_deep(options)
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str):
                    _check_text(f"a key of {path!a}" if path else "a key of the body", key)
                    where = f"{path}.{key}" if path else key
                else:
                    where = f"{path}[{key}]"
                stack.append((where, child, depth + 1))


def _check_text(where: str, text: str) -> None:
    # `where` names the field with ascii(): the name itself may hold the surrogate.
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            400, "invalid_code_point", f"{where} holds a lone surrogate, which is not a character"
        ) from None


def _too_deep(options: HttpOptions) -> BadRequest:
    return BadRequest(
        400, "json_too_deep", f"the body nests deeper than {options.max_json_depth} levels"
    )


def _too_large(options: HttpOptions) -> BadRequest:
    return BadRequest(
        413, "body_too_large", f"the body is larger than {options.max_body_bytes} bytes"
    )


@dataclass(slots=True)
class RequestContext:
    """Who is asking: the session (if any), its data, and the resolved role."""

    session: Session | None
    data: SessionData | None
    role: ClientRole | None
    #: The caller proved an agent credential: it has no session and gets none.
    is_agent: bool = False

    @classmethod
    async def of(
        cls, request: Request, roles: ClientRoles, *, create_session: bool
    ) -> RequestContext:
        """Resolve the caller. A session is created only when ``create_session`` is set (a
        cookie-less GET never creates one)."""
        credential = request.headers.get(AUTH_HEADER)
        is_agent = roles.agent_for_credential(credential) is not None
        try:
            session: Session | None = get_session(request)
        except RuntimeError:
            session = None  # no session middleware: every caller is session-less
        data = None
        if session is not None and not is_agent:
            data = await (session.load_or_create() if create_session else session.load())
        # With sessions in place, a caller without a credential is a browser, even before
        # its first session exists (a cookie-less GET creates none); without the session
        # middleware, such callers get the agent default role.
        role = roles.resolve(
            session_role=data.role if data is not None else None,
            credential=credential,
            has_session=session is not None,
        )
        if role is None:
            role = roles.agent_default
        return cls(
            session=session if not is_agent else None, data=data, role=role, is_agent=is_agent
        )

    async def data_for_writing(self) -> SessionData | None:
        """The session's data, creating the session now if there is none yet (browsers
        only; called once a request is known to be valid, so refused requests create no
        session)."""
        if self.data is None and self.session is not None:
            self.data = await self.session.load_or_create()
        return self.data

    def allows(self, api_name: str) -> bool:
        return self.role is not None and self.role.allows(api_name)


def store_unavailable(error: StoreUnavailable) -> JSONResponse:
    """The answer to a request that needs the session store while it is unreachable."""
    return error_response(
        503,
        "session_store_unavailable",
        "the session store cannot be reached; try again shortly",
        {"Retry-After": str(error.retry_after)},
    )
