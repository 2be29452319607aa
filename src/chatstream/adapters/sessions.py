"""Sessions, at their documented path: a re-export of :mod:`chatstream.adapters.http.sessions`
(the signed cookie, the per-request session, the middleware), of
:mod:`chatstream.adapters.http.session_stores` (the session data and the memory stores) and of
:mod:`chatstream.adapters.http.redis_store` (the Redis store).

    from chatstream.adapters.sessions import MemoryStore, SessionMiddleware, get_session
"""

from __future__ import annotations

from .http.redis_store import RedisStore
from .http.session_stores import (
    JSONMemoryStore,
    MemoryStore,
    SessionData,
    SessionStore,
    StoreUnavailable,
    TurnLock,
)
from .http.sessions import (
    SESSION_SCOPE_KEY,
    Session,
    SessionCookie,
    SessionMiddleware,
    get_session,
    new_session_id,
)

__all__ = [
    "SESSION_SCOPE_KEY",
    "JSONMemoryStore",
    "MemoryStore",
    "RedisStore",
    "Session",
    "SessionCookie",
    "SessionData",
    "SessionMiddleware",
    "SessionStore",
    "StoreUnavailable",
    "TurnLock",
    "get_session",
    "new_session_id",
]
