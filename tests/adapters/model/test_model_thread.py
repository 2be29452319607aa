"""The model thread: one thread for the whole life of the backend, failures reported."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import anyio
import pytest

from chatstream.adapters.driver import EngineDriver
from chatstream.adapters.model.model_thread import ModelThread, ModelThreadDied, StepResult
from chatstream.core import (
    SHED_MESSAGE,
    ChatStreamConfig,
    DecodingOptions,
    Engine,
    Finished,
    FinishReason,
    GenerationParams,
    PrefillChunk,
    Rejected,
    RejectReason,
    StepCompleted,
    StepFailed,
    StepPlan,
)

pytestmark = pytest.mark.anyio

PARAMS = GenerationParams()


class Fatal(BaseException):
    """Not an Exception: the kind of failure that ends a thread."""


class ScriptedBackend:
    """A stand-in model at the thread boundary: it records where it runs and can fail."""

    name: str = "scripted"
    stop_token_ids: frozenset[int] = frozenset({0})
    max_context: int | None = None

    def __init__(
        self,
        fail_steps: Sequence[int] = (),
        die_at: int | None = None,
        poison: Sequence[int] = (),
    ) -> None:
        self.threads: set[int] = {threading.get_ident()}
        self.fail_steps = set(fail_steps)
        self.poison = set(poison)
        self.runs: list[StepPlan] = []
        self.die_at = die_at
        self.closed_in: int | None = None

    def encode(self, text: str, *, add_special_tokens: bool | None = None) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int], /) -> str:
        return "".join(chr(t) for t in token_ids if t)

    def run_step(self, plan: StepPlan) -> StepCompleted:
        self.threads.add(threading.get_ident())
        self.runs.append(plan)
        if self.poison & {c.request_id for c in plan.prefill}:
            raise ValueError("a poisoned prompt")
        if plan.step == self.die_at:
            raise Fatal("the thread is going down")
        if plan.step in self.fail_steps:
            raise MemoryError("out of memory in this step")
        sampling = [c.request_id for c in plan.prefill if c.last]
        sampling += [d.request_id for d in plan.decode]
        return StepCompleted(step=plan.step, tokens={r: (ord("x"),) for r in sampling})

    def close(self) -> None:
        self.closed_in = threading.get_ident()


def plan(step: int) -> StepPlan:
    return StepPlan(step=step)


async def test_every_step_runs_in_one_thread_off_the_loop() -> None:
    async with ModelThread(ScriptedBackend) as model_thread:
        for step in range(5):
            assert await model_thread.run(plan(step)) == StepCompleted(step=step)
        backend = model_thread.backend
    # Built, run and closed in the same thread.
    assert len(backend.threads) == 1
    (thread,) = backend.threads
    assert thread != threading.get_ident()
    assert backend.closed_in == thread, "the backend is closed in its own thread"


async def test_plans_handed_over_together_come_back_in_order_on_the_loop_thread() -> None:
    loop_thread = threading.get_ident()
    answers: list[tuple[int, int, bool]] = []
    all_back = anyio.Event()
    handing_over = False

    async with ModelThread(lambda: ScriptedBackend(fail_steps=[2])) as model_thread:

        def done(result: StepResult) -> None:
            assert isinstance(result, StepCompleted | StepFailed)
            answers.append((result.step, threading.get_ident(), handing_over))
            if len(answers) == 4:
                all_back.set()

        handing_over = True
        for step in range(4):
            model_thread.start_step(plan(step), done)
        handing_over = False  # no callback ran inside start_step
        with anyio.fail_after(5):
            await all_back.wait()
    assert answers == [(step, loop_thread, False) for step in range(4)]


async def test_a_plan_handed_over_at_shutdown_is_answered_as_lost() -> None:
    answers: list[StepResult] = []
    async with ModelThread(ScriptedBackend) as model_thread:
        model_thread.start_step(plan(0), answers.append)
    # The step in flight finished; the thread then stopped.
    assert answers == [StepCompleted(step=0)]
    answers.clear()
    async with ModelThread(ScriptedBackend) as model_thread:
        pass
    with pytest.raises(RuntimeError, match="not running"):
        model_thread.start_step(plan(1), answers.append)
    assert answers == []


def prefill_plan(step: int, request_ids: Sequence[int]) -> StepPlan:
    return StepPlan(
        step=step,
        prefill=tuple(
            PrefillChunk(request_id=r, slot=r, token_ids=(1,), start=0, last=True, params=PARAMS)
            for r in request_ids
        ),
    )


async def test_a_poisoned_request_fails_alone_and_the_thread_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = ScriptedBackend(poison=[2])
    with caplog.at_level(logging.WARNING, logger="chatstream"):
        async with ModelThread(lambda: backend) as model_thread:
            result = await model_thread.run(prefill_plan(0, [0, 1, 2, 3]))
            assert isinstance(result, StepCompleted)
            assert result.tokens == {r: (ord("x"),) for r in (0, 1, 3)}
            # Its own message, which says nothing the exception said.
            assert result.errors == {2: "the model failed on this request (ValueError)"}
            assert await model_thread.run(plan(1)) == StepCompleted(step=1)
    # The whole step ran, then again, then halves until the poisoned row stood alone.
    assert len(backend.runs) > 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(
        "step 0 failed (ValueError: a poisoned prompt)" in r.message for r in warnings
    )
    assert all(r.exc_info is not None for r in warnings)  # with the traceback


async def test_a_step_that_always_runs_out_of_memory_sheds_its_rows_newest_first() -> None:
    backend = ScriptedBackend(fail_steps=[0])
    async with ModelThread(lambda: backend) as model_thread:
        result = await model_thread.run(prefill_plan(0, [0, 1, 2, 3]))
        assert isinstance(result, StepCompleted)
        assert result.tokens == {}
        assert set(result.errors) == {0, 1, 2, 3}
        assert result.errors[0] == "the model failed on this request (MemoryError)"
        assert result.errors[3] == SHED_MESSAGE
        # No plain retry of an out-of-memory step: the newest half goes first.
        assert [len(p.prefill) for p in backend.runs] == [4, 2, 1]
        assert await model_thread.run(plan(1)) == StepCompleted(step=1)


async def test_a_load_failure_is_reported_at_start() -> None:
    def broken() -> ScriptedBackend:
        raise OSError("weights not found")

    with pytest.raises(ModelThreadDied, match="failed to load: OSError: weights not found"):
        async with ModelThread(broken):
            pass  # pragma: no cover


async def test_a_dead_thread_fails_everything_and_refuses_new_work() -> None:
    config = ChatStreamConfig(
        num_of_concurrent_executions=1, max_queue_size=1, max_new_tokens=8, context_len=64
    )
    backend = ScriptedBackend(die_at=2)
    async with ModelThread(lambda: backend) as model_thread:
        engine = Engine(config, backend)
        async with EngineDriver(engine, model_thread) as driver:
            params = GenerationParams(max_new_tokens=8)
            options = DecodingOptions(stop_token_ids=backend.stop_token_ids)
            running = driver.submit((1, 2, 3), params, options)
            waiting = driver.submit((4, 5), params, options)
            finished = []
            with anyio.fail_after(5):
                for handle in (running, waiting):
                    events = [event async for event in handle]
                    finished.append(events[-1])
            assert all(isinstance(e, Finished) for e in finished)
            assert all(e.reason is FinishReason.ERROR for e in finished)  # type: ignore[union-attr]
            assert "the model thread died" in str(finished[0].error)  # type: ignore[union-attr]
            later = driver.submit((6,), params, options)
            assert later.outcome == Rejected(
                request_id=later.request_id, reason=RejectReason.UNAVAILABLE
            )
            later.close()
            with pytest.raises(ModelThreadDied):
                await model_thread.run(plan(9))
            stats = driver.statistics()
            assert (stats.running, stats.waiting) == (0, 0)
            assert stats.lost is not None
