"""Sessions, at their documented path: a re-export of :mod:`chatstream.adapters.http.sessions`
(the signed cookie, the per-request session, the middleware) and of
:mod:`chatstream.adapters.http.session_stores` (the session data and the stores).

    from chatstream.adapters.sessions import MemoryStore, SessionMiddleware, get_session
"""

from __future__ import annotations

from .http.session_stores import JSONMemoryStore, MemoryStore, SessionData, SessionStore
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
    "Session",
    "SessionCookie",
    "SessionData",
    "SessionMiddleware",
    "SessionStore",
    "get_session",
    "new_session_id",
]
