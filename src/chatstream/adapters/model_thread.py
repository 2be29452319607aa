"""The one thread that owns the model.

The backend is built, used and closed in a single worker thread, for the whole life of the
``async with ModelThread(...)`` block. Step plans go in and results come out through AnyIO
memory object streams, crossed with ``from_thread.run``, so the event loop never runs a
forward pass, a prompt tokenization or a sampling call.

A failing step becomes :class:`~chatstream.core.StepFailed` and the thread serves the next
one. If the thread itself dies (the backend raised something that is not an ``Exception``,
or failed to load), :meth:`ModelThread.run` raises :class:`ModelThreadDied`; nothing waits on
a dead thread.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from chatstream.core import StepCompleted, StepFailed, StepPlan

from .backend import Backend

__all__ = ["ModelThread", "ModelThreadDied"]

B = TypeVar("B", bound=Backend)


class ModelThreadDied(RuntimeError):
    """The model thread is gone; no step can run any more."""


@dataclass(frozen=True, slots=True)
class _Loaded(Generic[B]):
    backend: B


@dataclass(frozen=True, slots=True)
class _Died:
    message: str


_Message = StepCompleted | StepFailed | _Loaded[B] | _Died


class ModelThread(Generic[B]):
    """Runs a backend in its own thread for the life of an ``async with`` block.

    Args:
        factory: builds the backend; called in the model thread, so a slow model load does
            not block the event loop.
    """

    def __init__(self, factory: Callable[[], B]) -> None:
        self._factory = factory
        self._backend: B | None = None
        self._task_group: TaskGroup | None = None
        self._plans: MemoryObjectSendStream[StepPlan] | None = None
        self._results: MemoryObjectReceiveStream[_Message[B]] | None = None
        self._dead: str | None = None
        self._lock = anyio.Lock()

    @property
    def backend(self) -> B:
        """The loaded backend (for its tokenizer side; its model belongs to the thread)."""
        if self._backend is None:
            raise RuntimeError("the model thread is not running")
        return self._backend

    async def __aenter__(self) -> ModelThread[B]:
        await self.start()
        try:
            await self.wait_loaded()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def start(self) -> None:
        """Start the thread and the model load; :meth:`wait_loaded` waits for the load.

        ``async with`` does both; a pool starts every copy first, so they load together.
        """
        plans_send, plans_receive = anyio.create_memory_object_stream[StepPlan](1)
        results_send, results_receive = anyio.create_memory_object_stream[_Message[B]](1)
        self._plans, self._results = plans_send, results_receive
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._host, plans_receive, results_send)

    async def wait_loaded(self) -> None:
        """Wait until the backend is built.

        Raises:
            ModelThreadDied: the backend failed to load.
        """
        assert self._results is not None
        first = await self._results.receive()
        if isinstance(first, _Loaded):
            self._backend = first.backend
            return
        assert isinstance(first, _Died)
        self._dead = first.message
        raise ModelThreadDied(first.message)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        # Closing both ends lets the thread leave its loop after the step in flight.
        assert self._plans is not None and self._results is not None
        assert self._task_group is not None
        with anyio.CancelScope(shield=True):
            await self._plans.aclose()
            await self._results.aclose()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def run(self, plan: StepPlan) -> StepCompleted | StepFailed:
        """Run one step in the model thread.

        Raises:
            ModelThreadDied: the thread is gone.
        """
        assert self._plans is not None and self._results is not None
        if self._dead is not None:
            raise ModelThreadDied(self._dead)
        async with self._lock:
            try:
                await self._plans.send(plan)
                # Shielded: a result left unread would be taken as the answer to the next plan.
                with anyio.CancelScope(shield=True):
                    result = await self._results.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                result = _Died("the model thread stopped")
        if isinstance(result, StepCompleted | StepFailed):
            return result
        self._dead = result.message if isinstance(result, _Died) else "unexpected message"
        raise ModelThreadDied(self._dead)

    async def _host(
        self,
        plans: MemoryObjectReceiveStream[StepPlan],
        results: MemoryObjectSendStream[_Message[B]],
    ) -> None:
        async with plans, results:
            await anyio.to_thread.run_sync(
                self._thread_main, plans, results, limiter=anyio.CapacityLimiter(1)
            )

    def _thread_main(
        self,
        plans: MemoryObjectReceiveStream[StepPlan],
        results: MemoryObjectSendStream[_Message[B]],
    ) -> None:
        def reply(message: _Message[B]) -> bool:
            try:
                anyio.from_thread.run(results.send, message)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.RunFinishedError):
                return False
            return True

        try:
            backend = self._factory()
        except BaseException as error:
            reply(_Died(f"the model failed to load: {_describe(error)}"))
            return
        try:
            if not reply(_Loaded(backend)):
                return
            while True:
                try:
                    plan = anyio.from_thread.run(plans.receive)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.RunFinishedError):
                    return
                try:
                    result: _Message[B] = backend.run_step(plan)
                except Exception as error:
                    result = StepFailed(step=plan.step, message=_describe(error))
                except BaseException as error:
                    reply(_Died(f"the model thread died: {_describe(error)}"))
                    return
                if not reply(result):
                    return
        finally:
            backend.close()


def _describe(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()
