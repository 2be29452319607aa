"""A deadline on request bodies, and a quiet end for clients that leave while sending one.

Neither uvicorn nor hypercorn bounds how long a request body may take once its headers are
in: a client that sends a byte every few seconds holds a connection (and a task) for as long
as it likes. :class:`RequestBodyGuard` gives every request ``body_timeout_sec`` from its first
read of the body to the body's last byte; past that the request gets a 408 and its connection
is closed. It is plain ASGI, so it holds the same on both loops and under any server.

A client that disconnects mid-body makes Starlette raise ``ClientDisconnect`` inside the
handler, which the server would log as a traceback per request: here it is one INFO line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .common import HttpOptions, error_response

__all__ = ["BodyTimeout", "RequestBodyGuard"]

logger = logging.getLogger("chatstream.http")


class BodyTimeout(Exception):
    """The request body did not arrive in time."""


class RequestBodyGuard:
    """ASGI middleware: a deadline on each request's body (408 past it).

    Args:
        app: the app it guards.
        options: returns the HTTP options in force (read per request, so that a later
            ``configure_http`` applies).
    """

    def __init__(self, app: ASGIApp, options: Callable[[], HttpOptions]) -> None:
        self.app = app
        self.options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timeout = self.options().body_timeout_sec
        deadline: float | None = None
        body_done = False
        response_started = False

        async def guarded_receive() -> Message:
            nonlocal deadline, body_done
            if body_done:
                return await receive()  # only the disconnect is left to hear of
            if deadline is None:
                deadline = anyio.current_time() + timeout
            with anyio.move_on_after(deadline - anyio.current_time()):
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    body_done = True
                return message
            raise BodyTimeout

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except BodyTimeout:
            if response_started:
                raise
            logger.info("%s %s: no whole body within %g s (408)", *_what(scope), timeout)
            response = error_response(
                408,
                "body_timeout",
                f"the request body did not arrive within {timeout:g} seconds",
                {"Connection": "close"},
            )
            await response(scope, receive, send)
        except ClientDisconnect:
            logger.info("%s %s: the client left while sending its body", *_what(scope))


def _what(scope: Scope) -> tuple[str, str]:
    return str(scope.get("method", "")), str(scope.get("path", ""))
