"""Several model threads (one per GPU, or per model copy) behind one engine.

The engine splits its slots into contiguous groups, one per copy, and admits each new request
into the least-loaded group (:class:`~chatstream.core.Admission` with ``groups``). Each step
plan is cut along those groups; every copy runs its part in its own thread, at the same
time, with slots renumbered from 0; the results are merged into one step result.

A step that fails on one copy fails only that copy's requests; a copy whose thread dies
takes the whole pool down (:class:`~chatstream.core.ModelLost`), so nothing waits on it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TypeVar

from chatstream.core import (
    DecodeItem,
    DropKV,
    ModelLost,
    PrefillChunk,
    Release,
    RequestId,
    StepCompleted,
    StepFailed,
    StepPlan,
)

from .backend import Backend
from .model_thread import ModelThread, StepDone, StepResult, run_step

__all__ = ["ModelPool", "split_plan"]


_Item = TypeVar("_Item", Release, PrefillChunk, DecodeItem)


def _local(items: tuple[_Item, ...], low: int, high: int) -> tuple[_Item, ...]:
    return tuple(
        dataclasses.replace(item, slot=item.slot - low) for item in items if low <= item.slot < high
    )


def split_plan(plan: StepPlan, bounds: Sequence[int]) -> list[StepPlan | None]:
    """Cut a plan along slot groups (``bounds[g] <= slot < bounds[g + 1]``), renumbering
    each group's slots from 0. None for a group with nothing to do."""
    parts: list[StepPlan | None] = []
    for group, (low, high) in enumerate(itertools.pairwise(bounds)):
        transfers = tuple(
            t if isinstance(t, DropKV) else dataclasses.replace(t, slot=t.slot - low)
            for t in plan.transfers
            if (t.group == group if isinstance(t, DropKV) else low <= t.slot < high)
        )
        part = StepPlan(
            step=plan.step,
            release=_local(plan.release, low, high),
            prefill=_local(plan.prefill, low, high),
            decode=_local(plan.decode, low, high),
            transfers=transfers,
        )
        parts.append(part if part.release or part.prefill or part.decode or transfers else None)
    return parts


class ModelPool:
    """Model threads sharing one engine's slots.

    Args:
        factories: one backend factory per copy, each called in its own thread.
        bounds: the engine's slot groups (``Engine.slot_groups``) or, before the engine
            exists, the group sizes' running sums starting at 0.
    """

    def __init__(self, factories: Sequence[Callable[[], Backend]], bounds: Sequence[int]) -> None:
        if len(bounds) != len(factories) + 1:
            raise ValueError("one slot group per model copy")
        self.bounds = tuple(bounds)
        self._threads = [ModelThread(factory) for factory in factories]
        self._stack = AsyncExitStack()

    @property
    def backends(self) -> list[Backend]:
        return [thread.backend for thread in self._threads]

    async def __aenter__(self) -> ModelPool:
        async with AsyncExitStack() as stack:
            # Every copy starts loading in its own thread before we wait for any of them.
            for thread in self._threads:
                await thread.start()
                stack.push_async_exit(thread.__aexit__)
            for thread in self._threads:
                await thread.wait_loaded()
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    def start_step(self, plan: StepPlan, done: StepDone) -> None:
        """Hand each copy its part of the plan; ``done`` gets the merged result once every
        part is back (in the event-loop thread, never before this returns)."""
        parts = split_plan(plan, self.bounds)
        if len(parts) == 1:
            self._threads[0].start_step(plan, done)
            return
        results: dict[int, StepResult] = {}
        expected = sum(part is not None for part in parts)
        assert expected, "the engine never plans an empty step"

        def part_done(index: int, result: StepResult) -> None:
            results[index] = result
            if len(results) == expected:
                done(_merge(plan.step, parts, results))

        for index, part in enumerate(parts):
            if part is not None:
                self._threads[index].start_step(part, functools.partial(part_done, index))

    async def run(self, plan: StepPlan) -> StepCompleted | StepFailed:
        """Run one step and wait for it.

        Raises:
            ~.model_thread.ModelThreadDied: a copy's thread is gone.
        """
        return await run_step(self.start_step, plan)


def _merge(
    step: int, parts: Sequence[StepPlan | None], results: Mapping[int, StepResult]
) -> StepResult:
    """One result from the copies' results: a lost copy loses the pool; a failed part fails
    that copy's requests only."""
    for result in results.values():
        if isinstance(result, ModelLost):
            return result
    tokens: dict[RequestId, tuple[int, ...]] = {}
    errors: dict[RequestId, str] = {}
    for index, result in sorted(results.items()):
        if isinstance(result, StepCompleted):
            tokens.update(result.tokens)
            errors.update(result.errors)
        elif isinstance(result, StepFailed):
            part = parts[index]
            assert part is not None
            for request_id in [c.request_id for c in part.prefill]:
                errors[request_id] = result.message
            for request_id in [d.request_id for d in part.decode]:
                errors[request_id] = result.message
    return StepCompleted(step=step, tokens=tokens, errors=errors)
