"""Narrowing a failed model step down to the requests that cause it.

One step runs every running request's row in one batched forward, so one request that breaks
it (a bad value, a prompt the model chokes on) would fail them all. :func:`run_isolated`
keeps that failure to the requests that cause it:

1. the step is retried once as it was (a transient failure costs one forward);
2. if it fails again, its rows are split in two halves, each run on its own, and a half that
   fails is split again, down to single rows: the rows that fail alone fail, every other row
   gets its token as if nothing happened (k bad rows among n cost O(k log n) extra runs);
3. an out-of-memory failure is not retried as it was: the newest half of the rows (the
   highest request ids) is shed, so the older requests, which hold the most work, go on.

Running part of a plan must be safe for the backend: writes at the same positions again, and
the plan's releases go with the first part only (a slot may be released and given to a new
request in the same plan). Messages for failed requests name only their own failure; what
the exception said goes to whoever logs ``step_errors``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from .events import RequestId, StepCompleted, StepPlan

__all__ = ["SHED_MESSAGE", "IsolatedStep", "run_isolated", "step_rows"]

#: What a request shed to free memory for the others is told.
SHED_MESSAGE = "the server ran out of memory and stopped this request to finish the others"


@dataclass(frozen=True, slots=True, kw_only=True)
class IsolatedStep:
    """The outcome of :func:`run_isolated`.

    Attributes:
        result: the step's answer for the engine: tokens of the rows that ran, errors of the
            rows that failed (each with its own message).
        step_errors: every exception a run raised, in order (empty when the step went well
            at once), for the log.
        runs: how many times the backend was asked to run (part of) the step.
        failed: the exception behind each failed request's message.
    """

    result: StepCompleted
    step_errors: tuple[Exception, ...] = ()
    runs: int = 1
    failed: Mapping[RequestId, Exception] = field(default_factory=dict)


def step_rows(plan: StepPlan) -> tuple[RequestId, ...]:
    """The requests a plan runs, prefill chunks first, in plan order."""
    return tuple(c.request_id for c in plan.prefill) + tuple(d.request_id for d in plan.decode)


def _part(plan: StepPlan, rows: set[RequestId], *, releases: bool) -> StepPlan:
    return replace(
        plan,
        release=plan.release if releases else (),
        prefill=tuple(c for c in plan.prefill if c.request_id in rows),
        decode=tuple(d for d in plan.decode if d.request_id in rows),
    )


def run_isolated(
    plan: StepPlan,
    run: Callable[[StepPlan], StepCompleted],
    *,
    out_of_memory: Callable[[Exception], bool] = lambda error: False,
    describe: Callable[[Exception], str] = lambda error: type(error).__name__,
) -> IsolatedStep:
    """Run ``plan`` with ``run``, narrowing a failure down to the rows that cause it.

    Args:
        run: runs a plan (or part of one) and returns its result; raises on failure.
        out_of_memory: tells an out-of-memory failure from others.
        describe: the words of a failed request's message for its own exception.

    Returns:
        The merged result; never raises for an ``Exception`` from ``run`` (anything else, a
        ``KeyboardInterrupt`` say, goes through).
    """
    errors: list[Exception] = []
    tokens: dict[RequestId, tuple[int, ...]] = {}
    row_errors: dict[RequestId, str] = {}
    failed: dict[RequestId, Exception] = {}
    runs = 0

    def attempt(part: StepPlan) -> StepCompleted | Exception:
        nonlocal runs
        runs += 1
        try:
            return run(part)
        except Exception as error:
            errors.append(error)
            return error

    def merge(result: StepCompleted) -> None:
        tokens.update(result.tokens)
        row_errors.update(result.errors)

    def fail(request_id: RequestId, error: Exception, message: str) -> None:
        row_errors[request_id] = message
        failed[request_id] = error

    def narrow(part: StepPlan, error: Exception) -> None:
        # The releases go with the first half only: a retry of a part that carried them
        # carries them again (a slot released twice before anything else used it is the
        # same as once), but a later part must not release a slot the first one filled.
        rows = step_rows(part)
        if len(rows) <= 1:
            for request_id in rows:
                fail(request_id, error, f"the model failed on this request ({describe(error)})")
            return
        if out_of_memory(error):
            by_age = sorted(rows)
            keep, shed = by_age[: len(by_age) // 2], by_age[len(by_age) // 2 :]
            for request_id in shed:
                fail(request_id, error, SHED_MESSAGE)
            halves = [_part(part, set(keep), releases=bool(part.release))]
        else:
            half = len(rows) // 2
            halves = [
                _part(part, set(rows[:half]), releases=bool(part.release)),
                _part(part, set(rows[half:]), releases=False),
            ]
        for half_plan in halves:
            outcome = attempt(half_plan)
            if isinstance(outcome, StepCompleted):
                merge(outcome)
            else:
                narrow(half_plan, outcome)

    first = attempt(plan)
    if isinstance(first, StepCompleted):
        return IsolatedStep(result=first)
    outcome: StepCompleted | Exception = first
    if not out_of_memory(first):
        outcome = attempt(plan)
    if isinstance(outcome, StepCompleted):
        merge(outcome)
    else:
        narrow(plan, outcome)
    return IsolatedStep(
        result=StepCompleted(step=plan.step, tokens=tokens, errors=row_errors),
        step_errors=tuple(errors),
        runs=runs,
        failed=failed,
    )
