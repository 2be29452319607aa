"""What a session holds and where it is kept: :class:`SessionData` and the stores.

A :class:`SessionStore` maps a random session id to its :class:`SessionData` (its conversations,
per-session generation params, the client role). Two in-memory stores ship: :class:`MemoryStore`
keeps the objects themselves, :class:`JSONMemoryStore` their JSON, as a shared store (Redis, a
database) would. Both are bounded (least recently used out first), expire idle sessions and
bound the history each session keeps. :mod:`.sessions` ties them to cookies and requests.

Written here because no kept library stores this: the data is live chat state (a
:class:`~chatstream.core.Conversation` with a turn in flight), and a session library would keep
a dict in a signed cookie or in its own backend; a cache library would not bound the history.
"""

from __future__ import annotations

import abc
import copy
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, Self, TypeVar

from chatstream.core import (
    MAX_CONVERSATIONS,
    ConfigError,
    Conversation,
    Conversations,
    LocalProtocolError,
)

__all__ = [
    "MAX_CONVERSATIONS",
    "JSONMemoryStore",
    "MemoryStore",
    "SessionData",
    "SessionStore",
    "StoreUnavailable",
    "TurnLock",
    "session_bytes",
    "trim_session",
]

#: Version of the JSON layout written by :meth:`SessionData.to_json` (1: one conversation,
#: read still; 2: several).
_JSON_VERSION = 2

# ---------------------------------------------------------------------- data


class SessionData(Conversations):
    """Everything the server keeps for one browser session: its conversations (see
    :class:`~chatstream.core.Conversations`), plus

    Attributes:
        generation_params: this session's overrides of the generation defaults
            (JSON values only, so that every store can keep them).
        role: the name of the client role granted to this session, if any.
    """

    __slots__ = ("generation_params", "role")

    def __init__(
        self,
        conversation: Conversation | None = None,
        generation_params: dict[str, Any] | None = None,
        role: str | None = None,
    ) -> None:
        super().__init__(conversation)
        self.generation_params: dict[str, Any] = (
            generation_params if generation_params is not None else {}
        )
        self.role = role

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionData):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"SessionData({len(self.conversations)} conversations, role={self.role!r})"

    def merge_turn(self, latest: SessionData, conversation_id: str, current_before: str) -> None:
        """Take ``latest`` (the session as the store holds it now) except for the messages
        of the conversation this turn ran in (:meth:`Conversations.adopt_others`): other
        requests may also have saved parameters or a role while the turn ran."""
        self.adopt_others(latest, conversation_id, current_before)
        self.generation_params = latest.generation_params
        self.role = latest.role

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_json` gives back equal data."""
        return {
            "version": _JSON_VERSION,
            **super().to_json(),
            # A copy: the result must not change when the live params do.
            "generation_params": copy.deepcopy(self.generation_params),
            "role": self.role,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild session data from :meth:`to_json`'s output (or version 1's).

        Raises:
            LocalProtocolError: the data was written by an unknown version.
        """
        version = data.get("version")
        if version not in (1, _JSON_VERSION):
            raise LocalProtocolError(f"unsupported session version {version!r}")
        if version == 1:
            out = cls(Conversation.from_json(data["conversation"]))
        else:
            out = super().from_json(data)
        out.generation_params = copy.deepcopy(dict(data.get("generation_params", {})))
        out.role = data.get("role")
        return out


class SessionStore(Protocol):
    """Where session data lives, keyed by session id.

    A store may keep live objects (:class:`MemoryStore`) or serialized copies (a shared store
    such as Redis, see :class:`JSONMemoryStore`). Callers must therefore :meth:`save` what they
    change, and must not rely on two loads returning the same object.
    """

    async def load(self, session_id: str) -> SessionData | None:
        """The data of this session, or None if it does not exist or has expired."""
        ...

    async def save(self, session_id: str, data: SessionData) -> None:
        """Create or replace the data of this session."""
        ...

    async def delete(self, session_id: str) -> None:
        """Forget this session; nothing happens if it does not exist."""
        ...


class StoreUnavailable(Exception):
    """The store cannot be reached now (a Redis outage): the request that needs it gets a
    503 with ``Retry-After`` rather than a hang or a 500, and nothing stored is touched.

    Attributes:
        retry_after: seconds the client should wait before trying again.
    """

    def __init__(self, message: str, *, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TurnLock(Protocol):
    """One turn at a time per conversation, across every process that shares a store.

    A store shared by several processes provides one as its ``turn_lock`` attribute (see
    :func:`turn_lock_of`); within one process the HTTP layer keeps the sessions with a turn
    running itself, so the memory stores need none. A lock is held by a random token and
    expires on its own after a while, so that a process that dies mid-turn frees its
    conversation; the holder renews it every :attr:`renew_every` seconds while the turn runs.
    Every method may raise :class:`StoreUnavailable`.
    """

    #: Seconds between renewals while a turn runs (well below the lock's expiry).
    renew_every: float

    async def acquire(self, session_id: str) -> str | None:
        """Take the lock: its token, or None when another holder has it."""
        ...

    async def renew(self, session_id: str, token: str) -> bool:
        """Extend the lock's expiry; False when this token no longer holds it."""
        ...

    async def release(self, session_id: str, token: str) -> None:
        """Free the lock if this token still holds it (never another holder's)."""
        ...


def turn_lock_of(store: SessionStore) -> TurnLock | None:
    """The store's cross-process turn lock, or None for a store of one process."""
    lock: TurnLock | None = getattr(store, "turn_lock", None)
    return lock


# ---------------------------------------------------------------------- memory stores

_V = TypeVar("_V")


@dataclass(slots=True)
class _Entry(Generic[_V]):
    value: _V
    #: Clock reading at the last load or save.
    touched: float


class _BoundedMemoryStore(abc.ABC, Generic[_V]):
    """One process's sessions with idle expiry, LRU eviction and bounded history.

    Entries are kept in last-use order, which is also expiry order (the idle time allowed is
    the same for all), so expired entries are always at the front: a sweep pops them from
    there, and each entry is popped at most once (amortized O(1) per call). Sessions with no
    reply yet ("new" ones: a first turn, parameters set) are also kept in an order of their
    own, so that they are capped and evicted apart from conversations: a flood of cheap
    requests only ever evicts sessions like its own.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = 24 * 60 * 60,
        max_sessions: int = 10_000,
        max_new_sessions: int = 1_000,
        max_history_messages: int | None = 200,
        max_session_bytes: int | None = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl_seconds > 0:
            raise ConfigError("ttl_seconds", f"must be positive, got {ttl_seconds!r}")
        if max_sessions < 1:
            raise ConfigError("max_sessions", f"must be at least 1, got {max_sessions!r}")
        check_limits(max_history_messages, max_session_bytes)
        if max_new_sessions < 1:
            raise ConfigError("max_new_sessions", f"must be at least 1, got {max_new_sessions!r}")
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        self.max_new_sessions = min(max_new_sessions, max_sessions)
        self.max_history_messages = max_history_messages
        self.max_session_bytes = max_session_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[_V]] = OrderedDict()
        # The new sessions among the entries, in the same last-use order.
        self._new: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        """The number of live sessions (expired ones are swept first)."""
        self._sweep(self._clock())
        return len(self._entries)

    async def load(self, session_id: str) -> SessionData | None:
        """The session's data, or None if unknown or expired; counts as a use."""
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        now = self._clock()
        if now - entry.touched >= self.ttl_seconds:
            self._forget(session_id)
            return None
        entry.touched = now
        self._entries.move_to_end(session_id)
        if session_id in self._new:
            self._new.move_to_end(session_id)
        return self._unpack(entry.value)

    async def save(self, session_id: str, data: SessionData) -> None:
        """Store the session's data (trimming its history), evicting another if full."""
        now = self._clock()
        self._sweep(now)
        trim_session(
            data,
            max_history_messages=self.max_history_messages,
            max_session_bytes=self.max_session_bytes,
        )
        is_new = not has_reply(data)
        entry = self._entries.get(session_id)
        if entry is None:
            if is_new and len(self._new) >= self.max_new_sessions:
                self._evict_one(new_only=True)
            if len(self._entries) >= self.max_sessions:
                self._evict_one(new_only=False)
            self._entries[session_id] = _Entry(self._pack(data), now)
        else:
            entry.value, entry.touched = self._pack(data), now
            self._entries.move_to_end(session_id)
        if is_new:
            self._new[session_id] = None
            self._new.move_to_end(session_id)
        else:
            self._new.pop(session_id, None)

    async def delete(self, session_id: str) -> None:
        """Forget the session, if it exists."""
        self._forget(session_id)

    def _forget(self, session_id: str) -> None:
        self._entries.pop(session_id, None)
        self._new.pop(session_id, None)

    def _sweep(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if now - oldest.touched < self.ttl_seconds:
                return
            session_id, _ = self._entries.popitem(last=False)
            self._new.pop(session_id, None)

    def _evict_one(self, *, new_only: bool) -> None:
        # New sessions go first, the least recently used of them; a conversation only when
        # there is no new session left. The scans pass only sessions with a turn in flight,
        # which the engine's concurrency and queue limits keep few.
        idle_new = (sid for sid in self._new if not self._in_flight(self._entries[sid].value))
        victim = next(idle_new, None)
        if victim is None and new_only:
            victim = next(iter(self._new))
        if victim is None:
            victim = next(
                (sid for sid, e in self._entries.items() if not self._in_flight(e.value)),
                next(iter(self._entries)),
            )
        self._forget(victim)

    @abc.abstractmethod
    def _pack(self, data: SessionData) -> _V: ...

    @abc.abstractmethod
    def _unpack(self, value: _V) -> SessionData: ...

    @abc.abstractmethod
    def _in_flight(self, value: _V) -> bool: ...


class MemoryStore(_BoundedMemoryStore[SessionData]):
    """Sessions of one process, kept as live objects.

    Every request of a session gets the same :class:`SessionData` object, so a turn in
    flight in one request is seen by a concurrent one (which is how a second concurrent turn
    is refused). Not shared between worker processes (use a shared store for those), and
    meant for one event loop: it is not thread-safe.

    Args:
        ttl_seconds: a session not loaded or saved for this long is gone.
        max_sessions: when a new session would exceed this, one is evicted: the least
            recently used session with no reply yet if there is one, else the least recently
            used conversation; sessions with a turn in flight are spared unless every session
            has one.
        max_new_sessions: sessions with no reply yet (a first turn, parameters set) are
            capped apart: past this many, the least recently used of them goes, so that a
            flood of cheap requests never evicts a conversation.
        max_session_bytes: on save, the oldest exchanges are dropped until what the session
            holds (:func:`session_bytes`: messages, feedback data, parameters) fits; never the
            last exchange, never while a turn is in flight. None: no limit. The memory a
            store may hold is about ``max_sessions * max_session_bytes``.
        max_history_messages: on save, the oldest messages are dropped (from the saved
            object itself) in whole exchanges, a user message with its replies, until at most
            this many remain; never while a turn is in flight. Replies archived by regenerate
            are kept for the remaining messages only, and at most this many of them. None
            keeps everything.
        clock: seconds, monotonic; a fake one in tests.

    Raises:
        ConfigError: a limit is not positive.
    """

    def _pack(self, data: SessionData) -> SessionData:
        return data

    def _unpack(self, value: SessionData) -> SessionData:
        return value

    def _in_flight(self, value: SessionData) -> bool:
        return value.in_flight()


class _Frozen(NamedTuple):
    text: str
    #: Whether the conversation had a turn in flight when saved: known without parsing.
    in_flight: bool


class JSONMemoryStore(_BoundedMemoryStore[_Frozen]):
    """Like :class:`MemoryStore`, but keeps each session as JSON text, as a shared store
    (Redis) would: every load returns a fresh object, and what is not saved is lost.

    It proves that sessions survive serialization. A turn in flight is still seen by other
    requests if it was saved while in flight (the reply's status is part of the JSON).
    Takes the same arguments as :class:`MemoryStore`.
    """

    def _pack(self, data: SessionData) -> _Frozen:
        return _Frozen(json.dumps(data.to_json()), data.in_flight())

    def _unpack(self, value: _Frozen) -> SessionData:
        return SessionData.from_json(json.loads(value.text))

    def _in_flight(self, value: _Frozen) -> bool:
        return value.in_flight


def check_limits(max_history_messages: int | None, max_session_bytes: int | None) -> None:
    """Refuse history limits no store can keep.

    Raises:
        ConfigError: a limit is too small.
    """
    if max_history_messages is not None and max_history_messages < 1:
        raise ConfigError(
            "max_history_messages", f"must be at least 1 or None, got {max_history_messages!r}"
        )
    if max_session_bytes is not None and max_session_bytes < 1024:
        raise ConfigError(
            "max_session_bytes", f"must be at least 1024 or None, got {max_session_bytes!r}"
        )


def trim_session(
    data: SessionData, *, max_history_messages: int | None, max_session_bytes: int | None
) -> None:
    """Bound what a session keeps, as every store does on save: in each conversation the
    oldest exchanges go first (a user message with its replies and the versions that grew
    from them), never while a turn is in flight and never the newest exchange; over the byte
    limit, see :meth:`Conversations.shrink`. None: no such limit."""
    if max_history_messages is not None:
        data.trim(max_history_messages)
    if max_session_bytes is not None:
        data.shrink(max_session_bytes, other_bytes=_params_bytes(data))


def has_reply(data: SessionData) -> bool:
    """Whether the session holds a conversation (a reply), not only a first turn or params."""
    return data.has_reply()


def session_bytes(data: SessionData) -> int:
    """What a session holds, in bytes of UTF-8: its conversations
    (:func:`~chatstream.core.stored_bytes`) and its generation parameters as JSON."""
    return _params_bytes(data) + data.stored_bytes()


def _params_bytes(data: SessionData) -> int:
    return len(json.dumps(data.generation_params, ensure_ascii=False).encode())
