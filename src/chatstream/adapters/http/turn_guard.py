"""One turn at a time per conversation: in this process, and across processes when the
session store provides a :class:`~.session_stores.TurnLock` (Redis).

The ids of sessions with a turn running are kept here, so that a second turn is refused
without a round trip, and with stores that serialize sessions (whose copies would not see
each other's turn in flight). A shared store's lock is taken on top, renewed while the turn
streams (:meth:`TurnHold.keep`, run beside the response) and released on every exit path.
"""

from __future__ import annotations

import logging

import anyio

from chatstream.core import TurnInFlightError

from .session_stores import StoreUnavailable, TurnLock, turn_lock_of
from .sessions import Session

__all__ = ["TurnGuard", "TurnHold"]

logger = logging.getLogger("chatstream")


class TurnGuard:
    """The sessions of one service with a turn running."""

    def __init__(self) -> None:
        self._busy: set[str] = set()

    def busy(self, session_id: str) -> bool:
        """Whether this process runs a turn of this session now."""
        return session_id in self._busy

    async def hold(self, session: Session) -> TurnHold:
        """Take the session's conversation for one turn.

        Raises:
            TurnInFlightError: a turn of this conversation runs here or in another process.
            StoreUnavailable: the shared lock cannot be reached (nothing is held then).
        """
        session_id = session.id
        assert session_id is not None
        if session_id in self._busy:
            raise TurnInFlightError("a turn is running in this session")
        self._busy.add(session_id)
        lock = turn_lock_of(session.store)
        token = None
        try:
            if lock is not None:
                token = await lock.acquire(session_id)
                if token is None:
                    raise TurnInFlightError("a turn is running in this session on another node")
        except BaseException:
            self._busy.discard(session_id)
            raise
        return TurnHold(self, session_id, lock, token)


class TurnHold:
    """A conversation held for one turn; :meth:`release` once, on every exit path."""

    def __init__(
        self, guard: TurnGuard, session_id: str, lock: TurnLock | None, token: str | None
    ) -> None:
        self._guard = guard
        self._session_id = session_id
        self._lock = lock
        self._token = token
        self._released = False

    @property
    def shared(self) -> bool:
        """Whether a lock shared with other processes is held (their saves are then seen
        only by loading again)."""
        return self._lock is not None

    async def keep(self) -> None:
        """Renew the shared lock until cancelled (run it beside the turn's stream).

        A renewal that fails is logged, not raised: the turn goes on, since stopping a reply
        because Redis blinked would be worse than the small risk that the lock expires.
        """
        if self._lock is None or self._token is None:
            return
        while True:
            await anyio.sleep(self._lock.renew_every)
            try:
                if not await self._lock.renew(self._session_id, self._token):
                    logger.warning("the turn lock of a session expired while its turn ran")
            except StoreUnavailable as error:
                logger.warning("could not renew a turn lock: %s", error)

    async def release(self) -> None:
        """Free the conversation (shielded: it runs during cancellation too). A shared lock
        that cannot be reached is tried again every half second until it would have expired
        anyway, so that a store back from a restart (with the lock in its saved data) does
        not keep the conversation busy for the rest of the lock's life."""
        if self._released:
            return
        self._released = True
        self._guard._busy.discard(self._session_id)
        if self._lock is None or self._token is None:
            return
        with anyio.CancelScope(shield=True):
            deadline = anyio.current_time() + 3 * self._lock.renew_every
            while True:
                try:
                    await self._lock.release(self._session_id, self._token)
                    return
                except StoreUnavailable as error:
                    if anyio.current_time() >= deadline:
                        logger.warning("could not free a turn lock (it expires): %s", error)
                        return
                await anyio.sleep(0.5)
