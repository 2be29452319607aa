"""The driver and its request handles, with the model thread replaced by a hand-run runner."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from chatstream.adapters.driver import EngineDriver
from chatstream.adapters.model.model_thread import StepDone
from chatstream.core import (
    Admitted,
    ChatStreamConfig,
    DecodingOptions,
    Engine,
    Finished,
    GenerationParams,
    Rejected,
    StepCompleted,
    StepPlan,
    TextDelta,
    Usage,
)

pytestmark = pytest.mark.anyio


class CharDetokenizer:
    def decode(self, token_ids: Sequence[int], /) -> str:
        return "".join(chr(t) for t in token_ids)


class HandRunner:
    """Keeps each plan until the test answers it."""

    def __init__(self) -> None:
        self.pending: list[tuple[StepPlan, StepDone]] = []

    def start_step(self, plan: StepPlan, done: StepDone) -> None:
        self.pending.append((plan, done))

    def answer(self, token: str) -> None:
        (plan, done), *self.pending = self.pending
        sampled = [c.request_id for c in plan.prefill if c.last]
        sampled += [d.request_id for d in plan.decode]
        done(StepCompleted(step=plan.step, tokens={r: (ord(token),) for r in sampled}))


async def test_receive_takes_queued_events_at_once_and_times_out_without_ending() -> None:
    config = ChatStreamConfig(
        num_of_concurrent_executions=1, max_queue_size=1, max_new_tokens=8, context_len=64
    )
    runner = HandRunner()
    async with EngineDriver(Engine(config, CharDetokenizer()), runner) as driver:
        handle = driver.submit((1, 2), GenerationParams(max_new_tokens=3), DecodingOptions())
        assert isinstance(handle.outcome, Admitted)
        runner.answer("a")
        runner.answer("b")
        # Three events wait: each is taken without waiting, in order.
        with anyio.fail_after(1):
            events = [await handle.receive(timeout=30) for _ in range(3)]
        assert events == [
            handle.outcome,
            TextDelta(request_id=handle.request_id, text="a"),
            TextDelta(request_id=handle.request_id, text="b"),
        ]
        # None after the timeout: the request goes on.
        assert await handle.receive(timeout=0.01) is None
        assert driver.engine.is_active(handle.request_id)
        runner.answer("c")
        assert await handle.receive(timeout=30) == TextDelta(request_id=handle.request_id, text="c")
        finished = await handle.receive(timeout=30)
        assert isinstance(finished, Finished) and handle.finished is finished
        # After the terminal event the stream is over: None at once, with or without a timeout.
        with anyio.fail_after(1):
            assert await handle.receive(timeout=30) is None
            assert await handle.receive() is None
        assert handle.outcome == events[0]


def answer_until_ended(runner: HandRunner, driver: EngineDriver, request_id: int) -> None:
    while driver.engine.is_active(request_id):
        runner.answer("x")


async def test_a_closed_handle_knows_the_tokens_its_request_used() -> None:
    config = ChatStreamConfig(
        num_of_concurrent_executions=1, max_queue_size=1, max_new_tokens=8, context_len=64
    )
    runner = HandRunner()
    async with EngineDriver(Engine(config, CharDetokenizer()), runner) as driver:
        # Cancelled by its close after two tokens: the usage so far, though nobody heard
        # the end.
        running = driver.submit((1, 2, 3), GenerationParams(max_new_tokens=8), DecodingOptions())
        waiting = driver.submit((4, 5), GenerationParams(max_new_tokens=5), DecodingOptions())
        runner.answer("a")
        runner.answer("b")
        assert running.usage is None
        running.close()
        assert running.usage == Usage(prompt_tokens=3, completion_tokens=2)
        assert running.finished is None
        # Its end routed but unread when it closed: the usage of that end.
        answer_until_ended(runner, driver, waiting.request_id)
        assert waiting.usage is None
        waiting.close()
        assert waiting.usage == Usage(prompt_tokens=2, completion_tokens=5)
        # Read to its end: the usage of its Finished; a later close changes nothing.
        done = driver.submit((6,), GenerationParams(max_new_tokens=1), DecodingOptions())
        answer_until_ended(runner, driver, done.request_id)
        with anyio.fail_after(5):
            events = [event async for event in done]
        assert isinstance(events[-1], Finished) and done.usage == events[-1].usage
        done.close()
        assert done.usage == Usage(prompt_tokens=1, completion_tokens=1)


async def test_a_rejected_request_has_no_usage() -> None:
    config = ChatStreamConfig(
        num_of_concurrent_executions=1, max_queue_size=0, max_new_tokens=8, context_len=64
    )
    runner = HandRunner()
    async with EngineDriver(Engine(config, CharDetokenizer()), runner) as driver:
        first = driver.submit((1,), GenerationParams(max_new_tokens=8), DecodingOptions())
        second = driver.submit((1,), GenerationParams(max_new_tokens=8), DecodingOptions())
        assert isinstance(second.outcome, Rejected)
        second.close()
        assert second.usage is None
        first.close()
        assert first.usage == Usage(prompt_tokens=1, completion_tokens=0)
