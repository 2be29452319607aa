"""Resumable Server-Sent Event streams: a journal of each turn's events.

Every event of a ``/chat_stream`` turn streamed as SSE is written to the turn's journal before
it goes out, with the id ``<message id>.<n>`` (n counts from 0). The response that started the
turn reads the journal; so can a later request of the same session that names the message and
the last event it got (``Last-Event-ID``, which the browser's ``EventSource`` sends by itself
when it reconnects): it receives exactly the events after that one. A turn whose readers have
all gone keeps running for a grace period, so that a reload or a dropped connection loses
nothing; its reply is saved when it is done, and the journal is kept a while after that.

Written here rather than taken from a library: SSE libraries (sse-starlette and its kin) format
and send events; none keeps a per-turn replay log with reader counting and a grace period,
which is what this design needs, in a few dozen lines on anyio events.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio

from .streaming import sse_comment, sse_event

__all__ = [
    "MirroredStream",
    "StreamCopier",
    "StreamJournal",
    "StreamJournals",
    "StreamMirror",
    "event_id",
    "is_last_event",
    "is_stream_id",
    "parse_event_id",
    "stream_mirror_of",
]


def event_id(stream_id: str, index: int) -> str:
    """The SSE id of a stream's event number ``index``."""
    return f"{stream_id}.{index}"


_STREAM_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def is_stream_id(value: str) -> bool:
    """Whether ``value`` can name a stream (a message id: letters, digits, ``_`` and ``-``)."""
    return _STREAM_ID.fullmatch(value) is not None


def parse_event_id(value: str) -> tuple[str, int]:
    """The stream and the index of an event id made by :func:`event_id`.

    Raises:
        ValueError: not such an id.
    """
    stream_id, dot, index = value.strip().rpartition(".")
    number = index.isascii() and index.isdigit() and len(index) <= 9
    if not dot or not is_stream_id(stream_id) or not number:
        raise ValueError(f"not an event id of this server: {value!r}")
    return stream_id, int(index)


def is_last_event(event: bytes) -> bool:
    """Whether an encoded event ends its stream (``done`` or ``error``)."""
    return event.startswith((b"event: done\n", b"event: error\n"))


class StreamJournal:
    """The events of one stream, in order, for every reader that comes.

    Args:
        stream_id: the id of the events (the reply's message id).
        owner: the session the stream belongs to; None for a caller without a session (then
            knowing the unguessable id is the permission).
    """

    def __init__(self, stream_id: str, owner: str | None) -> None:
        self.stream_id = stream_id
        self.owner = owner
        self._events: list[bytes] = []
        self._readers = 0
        self._finished = False
        self._changed = anyio.Event()
        #: Set by whoever runs the stream: stops it (the ``/chat_stream/stop`` request).
        self.stop: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._events)

    @property
    def finished(self) -> bool:
        """No event follows (the last one is ``done`` or ``error``)."""
        return self._finished

    @property
    def readers(self) -> int:
        return self._readers

    def append(self, event: str, data: Mapping[str, Any]) -> None:
        if self._finished:
            raise RuntimeError("the stream has finished")
        index = len(self._events)
        self._events.append(sse_event(event, data, event_id(self.stream_id, index)))
        self._notify()

    def events_after(self, position: int) -> list[bytes]:
        """The encoded events from number ``position`` on."""
        return self._events[position:]

    async def wait_beyond(self, position: int, timeout: float) -> None:
        """Return once there are more than ``position`` events, the stream has finished,
        or ``timeout`` seconds have passed."""
        with anyio.move_on_after(timeout):
            while len(self._events) <= position and not self._finished:
                await self._changed.wait()

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def follow(self, after: int = -1, keepalive: float = 15.0) -> AsyncGenerator[bytes, None]:
        """The events after number ``after`` (all of them by default), then each as it comes,
        until the last; a keep-alive comment after each ``keepalive`` seconds without one.
        The caller counts as a reader while it iterates."""
        self._readers += 1
        self._notify()
        try:
            position = after + 1
            while True:
                if position < len(self._events):
                    # Everything already there in one write.
                    chunk = b"".join(self._events[position:])
                    position = len(self._events)
                    yield chunk
                    continue
                if self._finished:
                    return
                changed = self._changed
                with anyio.move_on_after(keepalive) as waited:
                    await changed.wait()
                if waited.cancelled_caught:
                    yield sse_comment("keep-alive")
        finally:
            self._readers -= 1
            self._notify()

    async def linger(
        self, grace: float, remote_readers: Callable[[], Awaitable[bool]] | None = None
    ) -> bool:
        """Wait while the stream can still be heard: until it finishes (True), or until it
        has had no reader for ``grace`` seconds (False; at once for 0). ``remote_readers``
        says whether someone reads it through another process; then it waits on."""
        while not self._finished:
            if self._readers:
                await self._changed.wait()
                continue
            if await self._no_reader_for(grace):
                if remote_readers is None or not await remote_readers():
                    return False
                await self._no_reader_for(1.0)  # look again in a second
        return True

    async def _no_reader_for(self, seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            while not self._finished and not self._readers:
                await self._changed.wait()
        return not self._finished and not self._readers


@dataclasses.dataclass(frozen=True, slots=True)
class MirroredStream:
    """What a mirror knows of a stream another process runs."""

    owner: str | None
    #: The number of its last event so far (-1 for none).
    last: int
    #: Its last event has been written.
    finished: bool


class StreamCopier(Protocol):
    """Copies one journal to a :class:`StreamMirror`."""

    async def run(self) -> None:
        """Copy each event as it comes; return once the last one is copied."""
        ...

    async def finish(self) -> None:
        """Copy what is left (after :meth:`run` was stopped early)."""
        ...


class StreamMirror(Protocol):
    """Journals copied to a store that several processes share, so that a stream can be
    resumed through any of them. A session store provides one as its ``stream_mirror``
    attribute (see :func:`stream_mirror_of`). Every method may raise
    :class:`~.session_stores.StoreUnavailable`."""

    def copier(self, journal: StreamJournal) -> StreamCopier:
        """What copies the journal's events to the store as they come."""
        ...

    async def has_readers(self, stream_id: str) -> bool:
        """Whether another process is following the stream now."""
        ...

    async def lookup(self, stream_id: str) -> MirroredStream | None:
        """The stream, or None when the mirror has none by that id (any more)."""
        ...

    def can_follow(self) -> bool:
        """Whether this process may follow one more stream from the mirror now."""
        ...

    def follow(self, stream_id: str, after: int, keepalive: float) -> AsyncGenerator[bytes, None]:
        """As :meth:`StreamJournal.follow`, from the mirror."""
        ...


def stream_mirror_of(store: object) -> StreamMirror | None:
    """The store's stream mirror, or None for a store of one process."""
    mirror: StreamMirror | None = getattr(store, "stream_mirror", None)
    return mirror


class StreamJournals:
    """The journals of one server: every running stream's, and the finished ones for
    ``keep_sec`` seconds (at most ``keep_finished`` of them, the oldest dropped first)."""

    def __init__(self, *, keep_sec: float = 60.0, keep_finished: int = 256) -> None:
        self.keep_sec = keep_sec
        self.keep_finished = keep_finished
        self._journals: dict[str, StreamJournal] = {}
        # Finished streams by the time they finished, oldest first.
        self._finished: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._journals)

    def open(self, stream_id: str, owner: str | None) -> StreamJournal:
        self._purge()
        journal = StreamJournal(stream_id, owner)
        self._journals[stream_id] = journal
        return journal

    def get(self, stream_id: str) -> StreamJournal | None:
        self._purge()
        return self._journals.get(stream_id)

    def close(self, journal: StreamJournal) -> None:
        """The stream has ended: keep its journal for latecomers, then let it go."""
        journal.finish()
        if self._journals.get(journal.stream_id) is journal:
            self._finished[journal.stream_id] = anyio.current_time()
            self._finished.move_to_end(journal.stream_id)
        self._purge()

    def _purge(self) -> None:
        expired = anyio.current_time() - self.keep_sec
        while self._finished:
            stream_id, finished_at = next(iter(self._finished.items()))
            if finished_at > expired and len(self._finished) <= self.keep_finished:
                break
            del self._finished[stream_id]
            self._journals.pop(stream_id, None)
