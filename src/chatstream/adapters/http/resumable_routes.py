"""The HTTP side of resumable streams: the response that runs a turn into its journal, the
resume (``GET /chat_stream``) and the stop (``POST /chat_stream/stop``).

The journals themselves, and the copy to a store shared by several processes, are in
:mod:`.resumable` and :mod:`.redis_streams`; this module decides what a request gets.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .common import HttpOptions, RequestContext, error_response, store_unavailable
from .resumable import (
    StreamJournal,
    StreamJournals,
    StreamMirror,
    is_stream_id,
    parse_event_id,
    stream_mirror_of,
)
from .session_stores import StoreUnavailable
from .streaming import TurnResponse

__all__ = ["SSE_MEDIA_TYPE", "ResumableStreams"]

SSE_MEDIA_TYPE = "text/event-stream; charset=utf-8"
_MESSAGE_ID_HEADER = "X-ChatStream-Last-Generated-Message-Id"


class ResumableStreams:
    """The journals of one HTTP API, and the requests that write and read them."""

    def __init__(self, options: HttpOptions, logger: logging.Logger) -> None:
        self.options = options
        self.logger = logger
        self.journals = StreamJournals(keep_sec=options.resume_keep_sec)

    def respond(
        self,
        message_id: str,
        context: RequestContext,
        events: AsyncIterator[tuple[str, dict[str, Any]]],
        cancelled: Callable[[], Awaitable[dict[str, Any]]],
        *,
        on_end: Callable[[str], Awaitable[None]],
        feeders: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
    ) -> TurnResponse:
        """A streamed turn: ``events`` (its Server-Sent Events, as (event, data)) go to a
        journal that this response, and any request that resumes the stream, reads.

        Args:
            cancelled: called when the turn is stopped or abandoned before its last event;
                stops it and gives the data of its ``done`` event.
            on_end, feeders: as :class:`~.streaming.TurnResponse` takes them.
        """
        owner = context.session.id if context.session is not None else None
        journal = self.journals.open(message_id, owner)
        # With a store that several processes share, any of them can resume it.
        mirror = stream_mirror_of(context.session.store) if context.session is not None else None

        async def produce() -> None:
            copier = mirror.copier(journal) if mirror is not None else None
            try:
                async with anyio.create_task_group() as copying:
                    if copier is not None:
                        copying.start_soon(self._copy_journal, copier.run)
                    try:
                        await write_journal()
                    finally:
                        copying.cancel_scope.cancel()
            finally:
                if copier is not None:
                    # The last events reach the store even when the response is closing.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(3):
                        await self._copy_journal(copier.finish)

        async def write_journal() -> None:
            ended = False  # the last event (done or error) is written
            try:
                with anyio.CancelScope() as producing:
                    journal.stop = producing.cancel
                    async for name, data in events:
                        journal.append(name, data)
                        ended = name in ("done", "error")
            except Exception as error:  # a stream must end with an event
                self.logger.exception("a chat stream failed")
                journal.append("error", {"message": str(error) or "error", "reason": "error"})
                ended = True
            finally:
                if not ended:
                    # Stopped (or abandoned): the reply so far stays, marked cancelled.
                    with anyio.CancelScope(shield=True):
                        journal.append("done", await cancelled())
                self.journals.close(journal)

        async def remote_readers() -> bool:
            if mirror is None:
                return False
            try:
                return await mirror.has_readers(journal.stream_id)
            except StoreUnavailable:
                return True  # cannot tell now: ask again in a second

        grace = self.options.resume_grace_sec
        return TurnResponse(
            journal.follow(keepalive=self.options.keepalive_sec),
            media_type=SSE_MEDIA_TYPE,
            headers={_MESSAGE_ID_HEADER: message_id},
            on_end=on_end,
            feeders=[produce, *feeders],
            linger=lambda: journal.linger(grace, remote_readers),
        )

    async def resume(self, request: Request, context: RequestContext) -> Response:
        """``GET /chat_stream``: the rest of a turn's Server-Sent Events, after the one named
        by the ``Last-Event-ID`` header (or ``last_event_id`` in the query), or all of them
        for ``?message_id=`` alone; 204 when the stream had already ended there."""
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        message_id = request.query_params.get("message_id")
        after = -1
        if last:
            try:
                stream_id, after = parse_event_id(last)
            except ValueError:
                return error_response(
                    400, "invalid_field", "'Last-Event-ID' is not an event id of this server"
                )
            if message_id is not None and message_id != stream_id:
                return error_response(
                    400, "invalid_field", "'Last-Event-ID' is not an event of 'message_id'"
                )
            message_id = stream_id
        if not message_id:
            return error_response(
                400, "missing_message_id", "give 'message_id' or a 'Last-Event-ID' header"
            )
        if not is_stream_id(message_id):
            return _stream_not_found()
        journal = self._journal_of(context, message_id)
        mirror: StreamMirror | None = None
        if journal is not None:
            finished, final = journal.finished, len(journal) - 1
        else:
            # Not run here: another process that shares the store may run it.
            mirror = stream_mirror_of(context.session.store) if context.session else None
            try:
                mirrored = await mirror.lookup(message_id) if mirror is not None else None
            except StoreUnavailable as error:
                return store_unavailable(error)
            owner = context.session.id if context.session is not None else None
            if mirror is None or mirrored is None or mirrored.owner not in (None, owner):
                return _stream_not_found()
            finished, final = mirrored.finished, mirrored.last
        if after > final:
            # No client can have received an event that was never sent.
            return error_response(
                400, "invalid_field", "'Last-Event-ID' names an event this stream does not have"
            )
        if finished and after >= final:
            # Nothing more will come: 204 also tells an EventSource not to reconnect.
            return Response(status_code=204)
        keepalive = self.options.keepalive_sec
        if journal is not None:
            chunks = journal.follow(after, keepalive=keepalive)
        else:
            assert mirror is not None
            if not mirror.can_follow():
                return error_response(
                    503,
                    "too_many_resumes",
                    "this server follows as many streams of other servers as it can; try"
                    " again shortly",
                    {"Retry-After": "1"},
                )
            chunks = mirror.follow(message_id, after, keepalive=keepalive)
        return TurnResponse(
            chunks, media_type=SSE_MEDIA_TYPE, headers={_MESSAGE_ID_HEADER: message_id}
        )

    def stop(self, body: Mapping[str, Any], context: RequestContext) -> Response:
        """``POST /chat_stream/stop`` with ``{"message_id": ...}``: stop a running turn of
        this session, wherever its client is (its reply so far stays, cancelled)."""
        message_id = body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            return error_response(400, "invalid_field", "'message_id' must be a string")
        journal = self._journal_of(context, message_id) if is_stream_id(message_id) else None
        if journal is None:
            return _stream_not_found()
        stopping = not journal.finished
        journal.stop()
        return JSONResponse({"success": True, "message": "success", "stopped": stopping})

    async def _copy_journal(self, copy: Callable[[], Awaitable[None]]) -> None:
        """Copy a journal to the shared store; an outage stops the copy, never the turn."""
        try:
            await copy()
        except Exception as error:  # the copy is a convenience: it must never stop a turn
            self.logger.warning("a stream is no longer copied to the session store: %s", error)

    def _journal_of(self, context: RequestContext, message_id: str) -> StreamJournal | None:
        """The journal of a stream of this caller's (None for another session's)."""
        journal = self.journals.get(message_id)
        owner = context.session.id if context.session is not None else None
        if journal is None or (journal.owner is not None and journal.owner != owner):
            return None
        return journal


def _stream_not_found() -> Response:
    return error_response(
        404,
        "stream_not_found",
        "no such stream here: it ended a while ago (its reply is in /get_history) or runs on"
        " another node",
    )
