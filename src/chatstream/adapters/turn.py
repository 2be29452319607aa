"""A chat turn in flight, and the refusal of one that never ran."""

from __future__ import annotations

from chatstream.core import (
    ChatStreamError,
    Conversation,
    Finished,
    FinishReason,
    Message,
    RejectReason,
    RenderedPrompt,
    TextDelta,
    Usage,
)

from .driver import RequestEvent, RequestHandle

__all__ = ["RequestRejected", "Turn"]

_REJECT_STATUS = {
    RejectReason.QUEUE_FULL: 429,
    RejectReason.DRAINING: 503,
    RejectReason.UNAVAILABLE: 503,
    RejectReason.PROMPT_TOO_LONG: 400,
}


class RequestRejected(ChatStreamError):
    """The engine refused the request before it ran (queue full, draining, ...)."""

    def __init__(self, reason: RejectReason) -> None:
        super().__init__(f"request rejected: {reason}", status_hint=_REJECT_STATUS[reason])
        self.reason = reason


class Turn:
    """One turn in flight: its events, and the conversation kept up to date with them.

    Iterate it (``async for event in turn``) for the request's events; leaving early (or
    :meth:`close`) cancels the generation and keeps the partial reply, marked cancelled.
    """

    def __init__(
        self, conversation: Conversation, handle: RequestHandle, prompt: RenderedPrompt
    ) -> None:
        self.conversation = conversation
        self.reply: Message = conversation.reply
        self.prompt = prompt
        self._handle = handle
        self._closed = False
        self.finished: Finished | None = None

    @property
    def outcome(self) -> RequestEvent:
        """Admitted or Queued (a rejected turn never gets this far)."""
        return self._handle.outcome

    @property
    def usage(self) -> Usage | None:
        """What the turn used once it ended, heard or not (a cancelled turn's tokens so
        far); None while it runs."""
        return self._handle.usage

    def events(self) -> Turn:
        """Every event of the turn; the last one is ``Finished``. (The turn itself.)"""
        return self

    def __aiter__(self) -> Turn:
        return self

    async def __anext__(self) -> RequestEvent:
        # A plain iterator, not an async generator: nothing is left for the garbage
        # collector to finalize when a consumer stops early.
        try:
            event = await self._handle.__anext__()
        except BaseException:
            self.close()
            raise
        if self._closed:
            raise StopAsyncIteration  # closed while this event was on its way
        self._apply(event)
        return event

    async def next_event(self, timeout: float | None = None) -> RequestEvent | None:
        """The next event; None after ``timeout`` seconds with none (the turn goes on) or
        after the last one. Unlike iteration, a timeout here does not cancel the turn."""
        try:
            event = await self._handle.receive(timeout)
        except BaseException:
            self.close()
            raise
        if event is None or self._closed:
            return None  # the end, or closed while this event was on its way
        self._apply(event)
        return event

    def _apply(self, event: RequestEvent) -> None:
        if isinstance(event, TextDelta):
            self.conversation.append_reply(event.text)
        elif isinstance(event, Finished):
            self.finished = event
            self.conversation.finish_reply(event.reason)
            self.close()

    def close(self) -> None:
        """Stop the turn if it is still running (the partial reply stays, cancelled)."""
        self._closed = True
        self._handle.close()
        conversation = self.conversation
        if self.finished is None and conversation.in_flight and conversation.reply is self.reply:
            conversation.finish_reply(FinishReason.CANCELLED)

    async def aclose(self) -> None:
        """:meth:`close`, for ``contextlib.aclosing``."""
        self.close()

    async def __aenter__(self) -> Turn:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
