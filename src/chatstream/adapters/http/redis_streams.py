"""Resumable streams across processes: each turn's journal copied to a Redis Stream.

The process that runs a turn appends its events, already encoded as Server-Sent Events, to
the stream ``<prefix>events:<message id>`` with the entry id ``0-<n + 1>`` for event ``n``, so
that a reader resuming after event ``n`` asks Redis for what follows ``0-<n + 1>`` and gets
exactly the missing events. The first entry also names the session that owns the stream. The
key lives ``running_ttl_seconds`` past the last copy (the publisher refreshes it while the turn
runs, events or not, so the key of a process that died goes away soon), and ``keep_seconds``
once the last event is in.

A process that serves a resume for another one follows the stream with ``XREAD BLOCK`` from
worker threads (the ``redis`` package's sync client, as for :class:`~.redis_store.RedisStore`)
and marks its presence in ``<prefix>events:<message id>:readers`` (a key with a short expiry,
set again on every read), which keeps the turn running past its grace period as a local reader
would.

Written here: Redis Streams are the kept tool for an append-only log with blocking reads; what
chatstream adds is the mapping of its own event numbers, owners and lifetimes onto them, a few
commands that no library knows.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import anyio
import redis

from .resumable import MirroredStream, StreamJournal, is_last_event
from .session_stores import StoreUnavailable
from .streaming import sse_comment, sse_event

if TYPE_CHECKING:
    from .redis_store import RedisStore

__all__ = ["RedisStreamMirror"]

logger = logging.getLogger("chatstream")

#: Milliseconds one ``XREAD`` blocks: under the client's socket timeout (1 s by default), and
#: the longest a follower that has gone keeps its worker thread.
_BLOCK_MS = 500
#: Milliseconds a follower's presence lasts without being set again (it is set again at
#: least every ``_BLOCK_MS``; longer, so that a short Redis stall does not lose it).
_PRESENCE_MS = 5000
#: Seconds a follower or a copy keeps trying through an outage before it gives up.
_OUTAGE_PATIENCE = 10.0


def _entry_id(index: int) -> str:
    return f"0-{index + 1}"


def _index_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[1]) - 1


class RedisStreamMirror:
    """The :class:`~.resumable.StreamMirror` of a :class:`~.redis_store.RedisStore`.

    Args:
        store: the store whose client, key prefix and outage handling it shares.
        running_ttl_seconds: a running stream's key expires this long after its last copy
            (refreshed every third of it while the turn runs).
        keep_seconds: a finished stream's key lives this long.
        max_followers: resumes served at once from the mirror by this process (each holds a
            worker thread and a pooled connection); more get 503 ``too_many_resumes``.
    """

    def __init__(
        self,
        store: RedisStore,
        *,
        running_ttl_seconds: float = 15.0,
        keep_seconds: float = 60.0,
        max_followers: int = 16,
    ) -> None:
        self.store = store
        self.running_ttl_ms = int(running_ttl_seconds * 1000)
        self.keep_ms = int(keep_seconds * 1000)
        self.max_followers = max_followers
        self._threads = anyio.CapacityLimiter(max_followers)
        self._following = 0

    def key(self, stream_id: str) -> str:
        return f"{self.store.key_prefix}events:{stream_id}"

    def copier(self, journal: StreamJournal) -> _RedisCopier:
        return _RedisCopier(self, journal)

    async def has_readers(self, stream_id: str) -> bool:
        return bool(
            await self.store.call(self.store.client.exists, f"{self.key(stream_id)}:readers")
        )

    async def lookup(self, stream_id: str) -> MirroredStream | None:
        key = self.key(stream_id)

        def read() -> tuple[list[Any], list[Any]]:
            pipe = self.store.client.pipeline(transaction=False)
            pipe.xrange(key, min=_entry_id(0), max=_entry_id(0))
            pipe.xrevrange(key, count=1)
            first, last = pipe.execute()
            return first, last

        try:
            first, last = await self.store.call(read)
        except redis.ResponseError:
            return None  # not a stream of ours
        if not first or not last:
            return None
        owner = first[0][1].get(b"o", b"").decode() or None
        last_id, last_fields = last[0]
        return MirroredStream(
            owner=owner, last=_index_of(last_id), finished=is_last_event(last_fields[b"e"])
        )

    def can_follow(self) -> bool:
        return self._following < self.max_followers

    async def follow(
        self, stream_id: str, after: int, keepalive: float
    ) -> AsyncGenerator[bytes, None]:
        key = self.key(stream_id)
        readers = f"{key}:readers"
        cursor = _entry_id(after)
        quiet_since = anyio.current_time()
        reached = anyio.current_time()  # the last time Redis answered
        self._following += 1
        try:
            while True:

                def read(cursor: str = cursor) -> tuple[int, list[Any]]:
                    pipe = self.store.client.pipeline(transaction=False)
                    pipe.set(readers, b"1", px=_PRESENCE_MS)
                    pipe.exists(key)
                    pipe.xread({key: cursor}, block=_BLOCK_MS)
                    _, exists, found = pipe.execute()
                    return int(exists), found or []

                try:
                    exists, found = await self.store.call(read, limiter=self._threads)
                    reached = anyio.current_time()
                except StoreUnavailable as error:
                    if anyio.current_time() - reached > _OUTAGE_PATIENCE:
                        logger.warning("a resumed stream lost the session store: %s", error)
                        yield _gone("the session store cannot be reached")
                        return
                    await anyio.sleep(0.5)
                    exists, found = 1, []
                except redis.ResponseError:
                    exists, found = 0, []
                entries = [fields[b"e"] for _, batch in found for _, fields in batch]
                if entries:
                    cursor = found[-1][1][-1][0].decode()
                    yield b"".join(entries)
                    if is_last_event(entries[-1]):
                        return
                    quiet_since = anyio.current_time()
                elif not exists:
                    # Its process stopped refreshing it: gone with that process.
                    yield _gone("the server running this reply went away")
                    return
                elif anyio.current_time() - quiet_since >= keepalive:
                    yield sse_comment("keep-alive")
                    quiet_since = anyio.current_time()
        finally:
            self._following -= 1


class _RedisCopier:
    """Copies one journal to its Redis Stream. What has been copied is counted in the worker
    thread, once Redis has it, so that a copy cut short by a cancellation is not lost
    count of (a copy is not cancellable midway)."""

    def __init__(self, mirror: RedisStreamMirror, journal: StreamJournal) -> None:
        self._mirror = mirror
        self._journal = journal
        self._key = mirror.key(journal.stream_id)
        self._copied = 0
        self._done = False

    async def run(self) -> None:
        while not self._done:
            await self._journal.wait_beyond(self._copied, self._mirror.running_ttl_ms / 3000)
            await self._copy_patiently()

    async def finish(self) -> None:
        while not self._done and (self._journal.finished or self._copied < len(self._journal)):
            await self._copy_patiently()

    async def _copy_patiently(self) -> None:
        """One copy, tried again every half second through a short outage."""
        deadline = anyio.current_time() + _OUTAGE_PATIENCE
        while True:
            try:
                await self._copy()
                return
            except StoreUnavailable:
                if anyio.current_time() >= deadline:
                    raise
            await anyio.sleep(0.5)

    async def _copy(self) -> None:
        journal = self._journal
        start = self._copied
        events = journal.events_after(start)
        finished = journal.finished
        ttl = self._mirror.keep_ms if finished else self._mirror.running_ttl_ms
        owner = journal.owner or ""
        client = self._mirror.store.client

        def copy() -> None:
            pipe = client.pipeline(transaction=False)
            for index, event in enumerate(events, start):
                fields: dict[Any, Any] = {"e": event}
                if index == 0:
                    fields["o"] = owner
                pipe.xadd(self._key, fields, id=_entry_id(index))
            pipe.pexpire(self._key, ttl)
            # An entry already there (a copy that reached Redis but whose answer was lost)
            # is refused by its id: the copy goes on from where Redis is.
            pipe.execute(raise_on_error=False)
            self._copied = start + len(events)
            self._done = finished

        await self._mirror.store.call(copy)


def _gone(why: str) -> bytes:
    # Without an id: it is this reader's news, not an event of the stream.
    return sse_event("error", {"message": why, "reason": "error"})
