"""An optional per-client rate limit: by address and by session, before any handler runs.

Admission control (``max_concurrent`` / ``max_queue_size``) protects the model from the
sum of all clients; it does not stop one client from taking every free place in the
queue again and again. :class:`RateLimitMiddleware` gives each client address and each
session its own budget, such as ``"60/minute"`` (several may be joined with ``;``:
``"10/second;300/hour"``). A request over either budget gets a 429 with ``Retry-After``
before it reads its body or touches a session, so a refused request costs a counter
update and nothing else.

The counting is the ``limits`` library's sliding-window counter (the one Flask-Limiter
and slowapi use): two counters per key and limit, so memory does not grow with the
budget, and the same storage interface later reaches Redis for several nodes. ``/health``
and ``/metrics`` are never limited: probes and scrapers must see the server as it is.

The address is the ASGI client address: behind a reverse proxy, let the server read
``X-Forwarded-For`` from the proxy only (uvicorn's ``--forwarded-allow-ips``), or every
client shares the proxy's budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem
from limits.storage import MemoryStorage, Storage
from limits.strategies import SlidingWindowCounterRateLimiter
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .common import HttpOptions, error_response, may_have_body, parse_rate_limit, route_path
from .sessions import SESSION_SCOPE_KEY, Session

__all__ = ["RATE_LIMIT_LOG_INTERVAL", "RateLimitMiddleware"]

logger = logging.getLogger("chatstream.http")

#: Seconds between the log lines that count refused requests (one line per interval).
RATE_LIMIT_LOG_INTERVAL = 10.0
_UNLIMITED_PATHS = frozenset({"/health", "/load", "/metrics"})


@dataclass(frozen=True, slots=True)
class _Budgets:
    per_address: tuple[RateLimitItem, ...]
    per_session: tuple[RateLimitItem, ...]


class RateLimitMiddleware:
    """ASGI middleware: 429 once a client address or a session is over its budget.

    Place it inside the session middleware (it reads the session id from the scope).

    Args:
        app: the app it guards.
        options: returns the HTTP options in force (read per request, so that a later
            ``configure_http`` applies).
        storage: where the counters live; process memory by default.
    """

    def __init__(
        self,
        app: ASGIApp,
        options: Callable[[], HttpOptions],
        storage: Storage | None = None,
    ) -> None:
        self.app = app
        self.options = options
        self._storage = storage
        self._limiter: SlidingWindowCounterRateLimiter | None = None
        self._parsed: tuple[tuple[str | None, str | None], _Budgets] | None = None
        self._refused_unlogged = 0
        self._logged_at = -math.inf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budgets = self._budgets() if scope["type"] == "http" else None
        if budgets is None or route_path(scope) in _UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        keys: list[tuple[str, tuple[RateLimitItem, ...]]] = []
        client = scope.get("client")
        if budgets.per_address and client:
            keys.append((f"address:{client[0]}", budgets.per_address))
        session = scope.get(SESSION_SCOPE_KEY)
        if budgets.per_session and isinstance(session, Session) and session.id is not None:
            keys.append((f"session:{session.id}", budgets.per_session))
        retry_after = self._spend(keys)
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        self._log_refusal()
        response = _refusal(scope, retry_after)
        await response(scope, receive, send)

    def _budgets(self) -> _Budgets | None:
        options = self.options()
        spelled = (options.rate_limit_per_address, options.rate_limit_per_session)
        if spelled == (None, None):
            return None
        if self._parsed is None or self._parsed[0] != spelled:
            budgets = _Budgets(
                parse_rate_limit(spelled[0], "rate_limit_per_address"),
                parse_rate_limit(spelled[1], "rate_limit_per_session"),
            )
            self._parsed = (spelled, budgets)
        return self._parsed[1]

    def _spend(self, keys: list[tuple[str, tuple[RateLimitItem, ...]]]) -> int | None:
        """Counts the request against every budget it falls under; None if all allow it,
        else the seconds until the tightest one would."""
        if not keys:
            return None
        if self._limiter is None:
            self._limiter = SlidingWindowCounterRateLimiter(self._storage or MemoryStorage())
        limiter = self._limiter
        # Test every budget before spending any: a refused request uses up none of them.
        refused = [
            (item, key) for key, items in keys for item in items if not limiter.test(item, key)
        ]
        if not refused:
            for key, items in keys:
                for item in items:
                    limiter.hit(item, key)
            return None
        now = time.time()
        resets = [limiter.get_window_stats(item, key).reset_time for item, key in refused]
        return max(1, math.ceil(max(resets) - now))

    def _log_refusal(self) -> None:
        # One line per interval, counting what it held back, never a line per request.
        now = time.monotonic()
        self._refused_unlogged += 1
        if now - self._logged_at < RATE_LIMIT_LOG_INTERVAL:
            return
        logger.warning(
            "rate limit: %d request(s) refused since the last report", self._refused_unlogged
        )
        self._logged_at, self._refused_unlogged = now, 0


def _refusal(scope: Scope, retry_after: int) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)}
    if may_have_body(scope):
        # The body is never read (a refusal costs nothing), so the connection cannot carry
        # another request: say so, or a client may send its next request into a connection
        # the server is closing (hypercorn closes it; the client sees no response at all).
        headers["Connection"] = "close"
    message = f"too many requests from this client; retry in {retry_after} s"
    if route_path(scope).startswith("/v1/"):
        body = {
            "error": {
                "message": message,
                "type": "rate_limit_exceeded",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        return JSONResponse(body, status_code=429, headers=headers)
    return error_response(429, "rate_limited", message, headers)
