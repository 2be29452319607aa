"""The AnyIO driver: owns an :class:`~chatstream.core.Engine` and its task group.

Everything the engine decides is routed synchronously, in the event-loop thread, right after
the input that caused it (a submit, a cancel, a step result): admission outcomes are known as
soon as :meth:`EngineDriver.submit` returns, which lets an HTTP handler answer 429 before it
sends any header. Step plans go to the model through a :class:`StepRunner` the moment the
engine makes them (the engine keeps at most one in flight), and each result is fed back to
the engine in the runner's callback, so the next plan leaves before any HTTP task runs.

Each request's events travel on its own bounded memory object stream. The bound is the most
events a request can ever produce, so routing never blocks and a slow client never stalls
the others. Leaving a :class:`RequestHandle` early (break, cancellation, exception, a
closed stream) cancels the request in the engine, and its slot is free before the next step.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from chatstream.core import (
    NEED_INPUT,
    Admitted,
    Cancel,
    DecodingOptions,
    Drain,
    Engine,
    EngineStatistics,
    Finished,
    FinishReason,
    GenerationParams,
    Queued,
    QueuePositionChanged,
    Rejected,
    StepPlan,
    Submit,
    TextDelta,
    Usage,
)

from .model.model_thread import StepDone, StepResult

__all__ = ["EngineDriver", "RequestEvent", "RequestHandle", "StepRunner"]

logger = logging.getLogger("chatstream")

#: What a request's handle yields: every core output except step plans.
RequestEvent = Queued | QueuePositionChanged | Admitted | Rejected | TextDelta | Finished


class StepRunner(Protocol):
    """Runs steps off the event loop (see :class:`~.model.model_thread.ModelThread`)."""

    def start_step(self, plan: StepPlan, done: StepDone) -> None:
        """Start the step without awaiting; call ``done`` with its result later, in the
        event-loop thread (never before returning)."""


class RequestHandle:
    """The events of one request: ``Queued``/``Admitted`` ... ``TextDelta`` ... ``Finished``
    (or a lone ``Rejected``).

    Use it as a context manager (sync or async) and iterate it; leaving the block before the
    terminal event cancels the request.
    """

    def __init__(
        self,
        driver: EngineDriver,
        request_id: int,
        events: MemoryObjectReceiveStream[RequestEvent],
    ) -> None:
        self.request_id = request_id
        self._driver = driver
        self._events = events
        self._peeked: RequestEvent | None = None
        self._outcome: RequestEvent | None = None
        self.finished: Finished | Rejected | None = None
        #: The request's token counts once it ended, whether or not its end was heard here:
        #: from its ``Finished`` event, or, for a handle closed first, from the ``Finished``
        #: that the close caused or left unread (the tokens of a cancelled request count
        #: too). None while it runs, and for a rejected request.
        self.usage: Usage | None = None

    @property
    def outcome(self) -> RequestEvent:
        """The admission outcome, known as soon as submit returns: Admitted, Queued or
        Rejected. It stays the first event, however far the request has gone since."""
        if self._outcome is None:
            self._peeked = self._outcome = self._events.receive_nowait()
        return self._outcome

    def __aiter__(self) -> RequestHandle:
        return self

    async def __anext__(self) -> RequestEvent:
        event, self._peeked = self._peeked, None
        if event is None:
            # An event already routed is taken without a wait, a checkpoint or a cancel
            # scope: under load most are, and this runs once per token per stream.
            try:
                event = self._events.receive_nowait()
            except anyio.WouldBlock:
                try:
                    event = await self._events.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    self._events.close()
                    raise StopAsyncIteration from None
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._events.close()
                raise StopAsyncIteration from None
        if self._outcome is None:
            self._outcome = event
        if isinstance(event, Finished | Rejected):
            self.finished = event
            if isinstance(event, Finished):
                self.usage = event.usage
            self._events.close()  # nothing follows a terminal event
        return event

    async def receive(self, timeout: float | None = None) -> RequestEvent | None:
        """The next event, or None after ``timeout`` seconds without one (the request goes
        on), or None at the end of the stream."""
        if timeout is None or self._peeked is not None:
            return await anext(self, None)
        try:
            self._peeked = self._events.receive_nowait()
        except anyio.WouldBlock:
            with anyio.move_on_after(timeout):
                return await anext(self, None)
            return None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass  # anext ends the iteration
        return await anext(self, None)

    def close(self) -> None:
        """Stop listening; cancels the request if it has not ended. Either way
        :attr:`usage` then holds what the request used."""
        if self.usage is None:
            self.usage = self._unread_usage()
        self._events.close()
        ended = self._driver.cancel(self.request_id)
        if self.usage is None and ended is not None:
            self.usage = ended.usage

    def _unread_usage(self) -> Usage | None:
        """The usage of a ``Finished`` routed here but not read yet (nobody reads it now)."""
        pending = [self._peeked] if self._peeked is not None else []
        try:
            while True:
                pending.append(self._events.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        ends = [event for event in pending if isinstance(event, Finished)]
        return ends[0].usage if ends else None

    def __enter__(self) -> RequestHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> RequestHandle:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class EngineDriver:
    """Drives an engine from AnyIO tasks.

    Args:
        engine: the sans-IO engine.
        runner: runs step plans off the event loop.
    """

    def __init__(self, engine: Engine, runner: StepRunner) -> None:
        self.engine = engine
        self._runner = runner
        self._ids = itertools.count()
        self._streams: dict[int, MemoryObjectSendStream[RequestEvent]] = {}
        self._running = False
        # Requests being cut by cancel_all: their ends are no failures to log.
        self._cutting: set[int] = set()
        # Requests being cancelled by their handle, and the end each got (nobody listens).
        self._unheard_ends: dict[int, Finished | None] = {}
        config = engine.config
        # Every event a request can produce, so that routing never blocks: the admission
        # outcome, queue moves, one delta per token, and the terminal event.
        self._buffer = config.max_queue_size + config.context_len + 4

    async def __aenter__(self) -> EngineDriver:
        self._running = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel_all()
        # A step still in flight comes back to nobody: no new plan leaves for a model that
        # is shutting down.
        self._running = False

    def submit(
        self,
        prompt_token_ids: tuple[int, ...],
        params: GenerationParams,
        decoding: DecodingOptions | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RequestHandle:
        """Submit a tokenized prompt. Returns at once; ``handle.outcome`` tells whether the
        request runs, waits or was rejected."""
        if not self._running:
            raise RuntimeError("use the driver inside `async with`")
        request_id = next(self._ids)
        send, receive = anyio.create_memory_object_stream[RequestEvent](self._buffer)
        self._streams[request_id] = send
        self.engine.send(
            Submit(
                request_id=request_id,
                prompt_token_ids=prompt_token_ids,
                params=params,
                decoding=decoding or DecodingOptions(),
                metadata=metadata or {},
            )
        )
        self._flush()
        return RequestHandle(self, request_id, receive)

    def cancel(self, request_id: int) -> Finished | None:
        """Cancel a request; nothing happens if it already ended. Returns the ``Finished``
        event this cancel ended it with (its usage counts the tokens so far), else None."""
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.close()
        if not self.engine.is_active(request_id):
            return None
        self._unheard_ends[request_id] = None
        try:
            self.engine.send(Cancel(request_id=request_id))
            self._flush()
            return self._unheard_ends[request_id]
        finally:
            del self._unheard_ends[request_id]

    def cancel_all(self, error: str | None = None) -> int:
        """Cancel every request; with ``error``, each ends with it as its error (a shutdown
        deadline), which its client is told. Returns how many were cut."""
        cut = [request_id for request_id in self._streams if self.engine.is_active(request_id)]
        self._cutting.update(cut)
        try:
            for request_id in cut:
                self.engine.send(Cancel(request_id=request_id, error=error))
            self._flush()
        finally:
            self._cutting.clear()
        return len(cut)

    def drain(self) -> None:
        """Admit nothing new; what was accepted goes on."""
        self.engine.send(Drain())

    def statistics(self) -> EngineStatistics:
        return self.engine.statistics()

    def _flush(self) -> None:
        while (event := self.engine.next_event()) is not NEED_INPUT:
            if isinstance(event, StepPlan):
                self._runner.start_step(event, self._step_done)
                continue
            if (
                isinstance(event, Finished)
                and event.reason is FinishReason.ERROR
                and event.request_id not in self._cutting
            ):
                # The one log line of a failed request (its step's traceback, if any, was
                # logged by the model thread).
                logger.error("request %d failed: %s", event.request_id, event.error)
            self._route(event)

    def _route(self, event: RequestEvent) -> None:
        request_id = event.request_id
        stream = self._streams.get(request_id)
        if stream is None:
            if isinstance(event, Finished) and request_id in self._unheard_ends:
                self._unheard_ends[request_id] = event
            return
        terminal = isinstance(event, Finished | Rejected)
        try:
            stream.send_nowait(event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
            # The consumer is gone: stop the work done for it.
            terminal = True
            if self.engine.is_active(request_id):
                self.engine.send(Cancel(request_id=request_id))
        if terminal:
            del self._streams[request_id]
            stream.close()

    def _step_done(self, result: StepResult) -> None:
        if self._running:
            self.engine.send(result)
            self._flush()
