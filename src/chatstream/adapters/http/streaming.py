"""Streaming HTTP responses for chat turns: the original's format and Server-Sent Events.

:class:`TurnResponse` is a plain ASGI response that always listens for the client going away,
whatever ASGI version the server speaks, so a client that leaves while its request waits in the
queue (when nothing is being sent yet) is noticed at once and its place freed. Starlette's own
``StreamingResponse`` only notices on the next write with ASGI 2.4 servers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["EOS", "ERROR_MARK", "TurnResponse", "sse_comment", "sse_event"]

#: The original's end-of-chunk token: every chunk is the whole reply so far plus this.
EOS = "<::EOS::>"
#: In the original format, an error after streaming started is sent as a last chunk
#: ``<::ERROR::>message<::EOS::>`` (the original ended the body silently).
ERROR_MARK = "<::ERROR::>"


def sse_event(event: str, data: Mapping[str, Any], event_id: str | None = None) -> bytes:
    """One Server-Sent Event with a JSON payload, and an id when given (the last id a client
    saw comes back in ``Last-Event-ID`` when it reconnects)."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    # The id last: the order of the fields does not matter to SSE, and clients that read
    # "event:" first keep working.
    tail = f"id: {event_id}\n" if event_id is not None else ""
    return f"event: {event}\ndata: {payload}\n{tail}\n".encode()


def sse_comment(text: str) -> bytes:
    """A comment line: ignored by clients, keeps proxies and idle timeouts at bay."""
    return f": {text}\n\n".encode()


class TurnResponse(Response):
    """An ASGI response that streams ``chunks`` and reports how it ended.

    A Starlette ``Response``, so that frameworks built on it (FastAPI) pass it through as it
    is when an endpoint returns it.

    Args:
        chunks: the body, produced lazily.
        on_end: awaited once, shielded, with "complete", "disconnected", "cancelled" (the
            server stopped the response) or "error" when the stream ends.
        feeders: tasks that produce what ``chunks`` reads (several requests merged into one
            stream, a turn written to its journal), run beside it and cancelled with it.
        linger: awaited when the client has gone, before the feeders are cancelled: they
            go on until it returns (a turn that another request may resume).
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
        on_end: Callable[[str], Awaitable[None]] | None = None,
        feeders: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
        linger: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.chunks = chunks
        self._feeders = feeders
        self._linger = linger
        self.status_code = status_code
        self.background = None
        self.init_headers(
            {
                "content-type": media_type,
                "cache-control": "no-cache",
                # Ask nginx and similar proxies not to buffer the stream.
                "x-accel-buffering": "no",
                **{k.lower(): v for k, v in (headers or {}).items()},
            }
        )
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = "cancelled"
        try:
            async with anyio.create_task_group() as tg:
                for feed in self._feeders:
                    tg.start_soon(feed)
                try:
                    with anyio.CancelScope() as writing:

                        async def watch_disconnect() -> None:
                            nonlocal outcome
                            while (await receive())["type"] != "http.disconnect":
                                pass
                            outcome = "disconnected"
                            writing.cancel()

                        tg.start_soon(watch_disconnect)
                        try:
                            await self._write(send)
                            outcome = "complete"
                        except OSError:
                            outcome = "disconnected"
                        except Exception:
                            outcome = "error"
                            raise
                        finally:
                            # Stop reading before lingering: a reader that has gone must
                            # not count as one that listens.
                            with anyio.CancelScope(shield=True):
                                aclose = getattr(self.chunks, "aclose", None)
                                if aclose is not None:
                                    await aclose()
                    if outcome == "disconnected" and self._linger is not None:
                        await self._linger()
                finally:
                    tg.cancel_scope.cancel()
        finally:
            # Once the feeders have ended: none of them runs on after this.
            if self._on_end is not None:
                with anyio.CancelScope(shield=True):
                    await self._on_end(outcome)

    async def _write(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
