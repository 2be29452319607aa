"""The one thread that owns the model.

The backend is built, used and closed in a single worker thread, for the whole life of the
``async with ModelThread(...)`` block, so the event loop never runs a forward pass, a prompt
tokenization or a sampling call.

The handoff is built for the time between two steps, when the model waits on the event loop:

* plans go to the thread through a thread-safe queue: :meth:`ModelThread.start_step` puts
  the plan there without awaiting anything, and the thread picks it up at once, without a
  trip through the event loop's scheduler;
* each result comes back with one ``from_thread.run_sync`` call that runs the step's
  callback in the event-loop thread. The driver's callback feeds the result to the engine,
  which plans the next step and hands it over before the callback returns, so the thread
  finds its next plan waiting: a step's turnaround is one wake-up of the loop plus the
  engine's own work, not a queue of HTTP tasks.

A failing step is retried once, then narrowed down to the requests that cause it
(:func:`~chatstream.core.run_isolated`): those fail, each with a message about its own
failure, and the others get their tokens; each failure is logged (logger ``chatstream``) with
its traceback. If the thread itself dies (the backend raised something that is not an ``Exception``,
or failed to load), every step in flight and every later one is answered with
:class:`~chatstream.core.ModelLost`; nothing waits on a dead thread.
"""

from __future__ import annotations

import collections
import logging
import queue
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from chatstream.core import ModelLost, StepCompleted, StepFailed, StepPlan, run_isolated

from .backend import Backend

__all__ = ["ModelThread", "ModelThreadDied", "StepDone", "StepResult", "run_step"]

B = TypeVar("B", bound=Backend)

#: What a step comes back as; the engine takes each of them as an input.
StepResult = StepCompleted | StepFailed | ModelLost
#: Called in the event-loop thread with the result of a step.
StepDone = Callable[[StepResult], None]

_STOPPED = "the model thread stopped"

logger = logging.getLogger("chatstream")


class ModelThreadDied(RuntimeError):
    """The model thread is gone; no step can run any more."""


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
        self._inbox: queue.SimpleQueue[StepPlan | None] = queue.SimpleQueue()
        # Callbacks of the plans handed over and not answered yet, oldest first: the
        # thread answers plans in the order it got them.
        self._waiting: collections.deque[StepDone] = collections.deque()
        self._loaded: anyio.Event | None = None
        self._dead: str | None = None

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
        self._loaded = anyio.Event()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._host)

    async def wait_loaded(self) -> None:
        """Wait until the backend is built.

        Raises:
            ModelThreadDied: the backend failed to load.
        """
        assert self._loaded is not None
        await self._loaded.wait()
        if self._backend is None:
            assert self._dead is not None
            raise ModelThreadDied(self._dead)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        # The thread leaves its loop after the step in flight, whose result is delivered.
        assert self._task_group is not None
        self._inbox.put(None)
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None
            self._die(_STOPPED)

    def start_step(self, plan: StepPlan, done: StepDone) -> None:
        """Hand a plan to the thread; ``done`` gets its result in the event-loop thread.

        Never awaits and never calls ``done`` before returning: a dead thread's answer,
        :class:`~chatstream.core.ModelLost`, comes from a task of its own.
        """
        if self._dead is None:
            self._waiting.append(done)
            self._inbox.put(plan)
            return
        if self._task_group is None:
            raise RuntimeError("the model thread is not running")
        message = self._dead

        async def answer() -> None:
            done(ModelLost(message=message))

        self._task_group.start_soon(answer)

    async def run(self, plan: StepPlan) -> StepCompleted | StepFailed:
        """Run one step and wait for it.

        Raises:
            ModelThreadDied: the thread is gone.
        """
        return await run_step(self.start_step, plan)

    # ------------------------------------------------------------------ event-loop side

    async def _host(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._thread_main, limiter=anyio.CapacityLimiter(1))
        except Exception as error:
            # Only a bug on the event-loop side (a step callback that raised) gets here.
            self._die(f"the model thread died: {_describe(error)}")
            raise

    def _loaded_backend(self, backend: B) -> None:
        self._backend = backend
        assert self._loaded is not None
        self._loaded.set()

    def _step_finished(self, result: StepCompleted | StepFailed) -> None:
        self._waiting.popleft()(result)

    def _die(self, message: str) -> None:
        if self._dead is None:
            self._dead = message
            if message != _STOPPED:
                logger.error("%s", message)
        while self._waiting:
            self._waiting.popleft()(ModelLost(message=self._dead))
        assert self._loaded is not None
        self._loaded.set()

    # ------------------------------------------------------------------ model thread

    def _thread_main(self) -> None:
        def in_loop(function: Callable[..., None], *args: object) -> bool:
            try:
                anyio.from_thread.run_sync(function, *args)
            except anyio.RunFinishedError:
                return False
            return True

        try:
            backend = self._factory()
        except BaseException as error:
            in_loop(self._die, f"the model failed to load: {_describe(error)}")
            return
        try:
            if not in_loop(self._loaded_backend, backend):
                return
            while (plan := self._inbox.get()) is not None:
                try:
                    result: StepCompleted | StepFailed = _run_isolated(backend, plan)
                except BaseException as error:
                    in_loop(self._die, f"the model thread died: {_describe(error)}")
                    return
                if not in_loop(self._step_finished, result):
                    return
        finally:
            backend.close()


async def run_step(
    start_step: Callable[[StepPlan, StepDone], None], plan: StepPlan
) -> StepCompleted | StepFailed:
    """Await a step started through a ``start_step(plan, done)`` method.

    Raises:
        ModelThreadDied: the step came back as :class:`~chatstream.core.ModelLost`.
    """
    finished = anyio.Event()
    results: list[StepResult] = []

    def done(result: StepResult) -> None:
        results.append(result)
        finished.set()

    start_step(plan, done)
    await finished.wait()
    (result,) = results
    if isinstance(result, ModelLost):
        raise ModelThreadDied(result.message)
    return result


def _run_isolated(backend: Backend, plan: StepPlan) -> StepCompleted:
    isolated = run_isolated(plan, backend.run_step, out_of_memory=_out_of_memory)
    for error in isolated.step_errors:
        # Once per failed run, with the traceback; each request that fails of it is logged
        # again, once, by the driver (with its request id).
        logger.warning(
            "step %d failed (%s); narrowing it down to the requests that cause it",
            plan.step,
            _describe(error),
            exc_info=error,
        )
    return isolated.result


def _out_of_memory(error: Exception) -> bool:
    # torch.OutOfMemoryError (CUDA, MPS) or a host MemoryError; no torch import here.
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def _describe(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()
