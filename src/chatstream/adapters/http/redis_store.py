"""Sessions in Redis, shared by every process and node: :class:`RedisStore`, its
cross-process turn lock, and (:mod:`.redis_streams`) the mirror of its resumable streams.

Each session is one string key holding :meth:`SessionData.to_json` (with its version) and an
expiry; the turn lock of a conversation is a second key holding a random token. The store is
written here (a few commands and two Lua scripts) because what it keeps is chatstream's own
data with chatstream's bounds; the client is the ``redis`` package's **sync** client with a
connection pool, called from worker threads, since its asyncio client does not run on trio.

Every call has short socket and connect timeouts and at most one immediate retry (which
replaces a pooled connection that a Redis restart left dead), so an outage makes a request
fail fast with :class:`~.session_stores.StoreUnavailable` (a 503) instead of hanging it.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatstream.core import ConfigError, LocalProtocolError

from .redis_streams import RedisStreamMirror
from .session_stores import (
    SessionData,
    StoreUnavailable,
    check_limits,
    has_reply,
    trim_session,
)

__all__ = ["RedisStore", "RedisTurnLock"]

logger = logging.getLogger("chatstream")

_T = TypeVar("_T")

# Compare-and-extend and compare-and-delete: a holder whose lock expired and was taken by
# another must never extend or free the other's lock. Loaded with EVALSHA, and with EVAL
# again by redis-py when a restarted Redis has forgotten them (NOSCRIPT).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

#: What an unreachable or unready Redis raises (a refused or reset connection, a timeout, a
#: full pool, a server still loading its data).
_OUTAGE = (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisStore:
    """Sessions in Redis, for several processes or machines behind one balancer.

    A :class:`~.session_stores.SessionStore` with a :class:`RedisTurnLock` (``turn_lock``),
    so that one conversation runs one turn at a time across every process that shares the
    Redis, and a :class:`~.redis_streams.RedisStreamMirror` (``stream_mirror``), so that any
    of them can resume a stream that another runs. Give every process the same
    ``secret_key`` too, so that each can read the cookie.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        client: an already configured ``redis.Redis`` instead of ``url``; its own timeouts
            and retries then apply.
        ttl_seconds: a session not loaded or saved for this long expires (Redis' ``EX``,
            set again by every load and save).
        new_session_ttl_seconds: a session saved with no reply yet (parameters only, or a
            first turn refused by the model) expires this much sooner, so that a flood of
            cookie-less requests leaves little behind. Redis cannot cheaply keep a least
            recently used order of its own keys: cap its memory with ``maxmemory`` and
            ``maxmemory-policy volatile-lru`` (every session key has an expiry) instead of
            a ``max_sessions``.
        max_history_messages, max_session_bytes: as for
            :class:`~.session_stores.MemoryStore`, enforced on every save.
        lock_ttl_seconds: a turn lock not renewed for this long expires (a process that died
            mid-turn frees its conversation after this); renewed every third of it.
        socket_timeout, connect_timeout: seconds one command may wait; an outage is noticed
            within about twice this (one retry on a fresh connection).
        max_connections: connections in the pool (each call holds one in a worker thread).
        retry_after: the ``Retry-After`` seconds of the 503 during an outage.
        key_prefix: put before every key (several apps in one Redis database).

    Raises:
        ConfigError: a limit or timeout is not positive.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: redis.Redis | None = None,
        ttl_seconds: int = 24 * 60 * 60,
        new_session_ttl_seconds: int = 60 * 60,
        max_history_messages: int | None = 200,
        max_session_bytes: int | None = 256 * 1024,
        lock_ttl_seconds: float = 10.0,
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        max_connections: int = 64,
        retry_after: int = 2,
        key_prefix: str = "chatstream:",
    ) -> None:
        for name, value in (
            ("ttl_seconds", ttl_seconds),
            ("new_session_ttl_seconds", new_session_ttl_seconds),
            ("lock_ttl_seconds", lock_ttl_seconds),
            ("socket_timeout", socket_timeout),
            ("connect_timeout", connect_timeout),
            ("max_connections", max_connections),
            ("retry_after", retry_after),
        ):
            if not value > 0:
                raise ConfigError(name, f"must be positive, got {value!r}")
        if not isinstance(ttl_seconds, int) or not isinstance(new_session_ttl_seconds, int):
            raise ConfigError("ttl_seconds", "Redis expiries are whole seconds")
        check_limits(max_history_messages, max_session_bytes)
        if client is None:
            try:
                client = redis.Redis.from_url(
                    url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=connect_timeout,
                    retry=Retry(NoBackoff(), 1),
                    max_connections=max_connections,
                )
            except ValueError as error:
                raise ConfigError("session_store", f"not a Redis URL: {error}") from None
        self.client = client
        self.ttl_seconds = ttl_seconds
        self.new_session_ttl_seconds = min(new_session_ttl_seconds, ttl_seconds)
        self.max_history_messages = max_history_messages
        self.max_session_bytes = max_session_bytes
        self.retry_after = retry_after
        self.key_prefix = key_prefix
        self.turn_lock = RedisTurnLock(self, lock_ttl_seconds)
        self.stream_mirror = RedisStreamMirror(self)

    def key(self, session_id: str) -> str:
        """The key of a session's data."""
        return f"{self.key_prefix}session:{session_id}"

    async def load(self, session_id: str) -> SessionData | None:
        """The session's data, or None if unknown or expired; a load is a use (its expiry
        starts again)."""
        raw = await self.call(self.client.getex, self.key(session_id), ex=self.ttl_seconds)
        if raw is None:
            return None
        try:
            return SessionData.from_json(json.loads(raw))
        except (ValueError, LocalProtocolError, KeyError, TypeError) as error:
            # Unreadable (another program's key, a newer version): no session, not a 500.
            logger.warning("RedisStore: session %s is unreadable: %s", session_id[:8], error)
            return None

    async def save(self, session_id: str, data: SessionData) -> None:
        """Store the session's data within the history limits, with a fresh expiry."""
        trim_session(
            data,
            max_history_messages=self.max_history_messages,
            max_session_bytes=self.max_session_bytes,
        )
        ttl = self.ttl_seconds if has_reply(data) else self.new_session_ttl_seconds
        text = json.dumps(data.to_json(), ensure_ascii=False, separators=(",", ":"))
        await self.call(self.client.set, self.key(session_id), text.encode(), ex=ttl)

    async def delete(self, session_id: str) -> None:
        """Forget the session, if it exists."""
        await self.call(self.client.delete, self.key(session_id))

    async def ping(self) -> bool:
        """Whether Redis answers now (for ``/health``)."""
        try:
            await self.call(self.client.ping)
        except StoreUnavailable:
            return False
        return True

    async def call(
        self,
        method: Callable[..., _T],
        *args: Any,
        limiter: anyio.CapacityLimiter | None = None,
        **kwargs: Any,
    ) -> _T:
        """Run one client call in a worker thread (of ``limiter``'s, anyio's default one
        otherwise), turning an outage into :class:`StoreUnavailable`. Not cancellable
        midway: the timeouts bound it."""
        try:
            return await anyio.to_thread.run_sync(
                functools.partial(method, *args, **kwargs), limiter=limiter
            )
        except _OUTAGE as error:
            raise StoreUnavailable(
                f"the session store is unreachable: {error}", retry_after=self.retry_after
            ) from error

    def close(self) -> None:
        """Close the pool's connections (the store may still be used: it reconnects)."""
        self.client.close()


class RedisTurnLock:
    """The turn lock of :class:`RedisStore`: ``SET key token NX PX ttl`` to take it, and
    compare-and-extend / compare-and-delete Lua scripts to renew and free it, so that a
    holder never touches a lock that expired and passed to someone else."""

    def __init__(self, store: RedisStore, ttl_seconds: float) -> None:
        self._store = store
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self.renew_every = ttl_seconds / 3
        self._renew = store.client.register_script(_RENEW)
        self._release = store.client.register_script(_RELEASE)

    def key(self, session_id: str) -> str:
        return f"{self._store.key_prefix}turn:{session_id}"

    async def acquire(self, session_id: str) -> str | None:
        token = secrets.token_urlsafe(16)
        taken = await self._store.call(
            self._store.client.set, self.key(session_id), token, nx=True, px=self._ttl_ms
        )
        return token if taken else None

    async def renew(self, session_id: str, token: str) -> bool:
        keys, args = [self.key(session_id)], [token, self._ttl_ms]
        return bool(await self._store.call(self._renew, keys=keys, args=args))

    async def release(self, session_id: str, token: str) -> None:
        await self._store.call(self._release, keys=[self.key(session_id)], args=[token])
