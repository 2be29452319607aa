"""Narrowing a failed step: the rows that break it fail alone, every other row gets its token,
releases are applied before anything else and never after a later part filled the slot."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from chatstream.core import (
    SHED_MESSAGE,
    DecodeItem,
    GenerationParams,
    PrefillChunk,
    Release,
    StepCompleted,
    StepPlan,
    run_isolated,
    step_rows,
)

PARAMS = GenerationParams()


def plan_of(prefill: int, decode: int, *, releases: int = 1, last: bool = True) -> StepPlan:
    """Rows 0..prefill-1 prefill (slots 0..), then decoding rows; ``releases`` slots freed."""
    chunks = tuple(
        PrefillChunk(request_id=r, slot=r, token_ids=(1, 2), start=0, last=last, params=PARAMS)
        for r in range(prefill)
    )
    decodes = tuple(
        DecodeItem(request_id=r, slot=r, token_id=5, position=9, params=PARAMS)
        for r in range(prefill, prefill + decode)
    )
    freed = tuple(Release(request_id=100 + i, slot=50 + i) for i in range(releases))
    return StepPlan(step=7, release=freed, prefill=chunks, decode=decodes)


class Model:
    """Runs plans; raises while any of ``poison`` is in the plan, or for the first
    ``transient`` runs whatever they hold; records what it ran."""

    def __init__(
        self,
        poison: frozenset[int] | set[int] = frozenset(),
        *,
        transient: int = 0,
        oom_above: int | None = None,
    ) -> None:
        self.poison = set(poison)
        self.transient = transient
        self.oom_above = oom_above
        self.ran: list[StepPlan] = []

    def __call__(self, plan: StepPlan) -> StepCompleted:
        self.ran.append(plan)
        rows = step_rows(plan)
        if self.transient:
            self.transient -= 1
            raise RuntimeError("a hiccup")
        if self.oom_above is not None and len(rows) > self.oom_above:
            raise MemoryError("out of memory")
        bad = self.poison & set(rows)
        if bad:
            raise ValueError(f"poisoned by {sorted(bad)}")
        sampling = [c.request_id for c in plan.prefill if c.last]
        sampling += [d.request_id for d in plan.decode]
        return StepCompleted(step=plan.step, tokens={r: (1000 + r,) for r in sampling})


def is_oom(error: Exception) -> bool:
    return isinstance(error, MemoryError)


def test_a_step_that_goes_well_runs_once() -> None:
    model = Model()
    plan = plan_of(2, 3)
    outcome = run_isolated(plan, model)
    assert outcome.runs == 1 and model.ran == [plan]
    assert outcome.result.tokens == {r: (1000 + r,) for r in range(5)}
    assert outcome.step_errors == () and outcome.result.errors == {}


def test_a_transient_failure_is_retried_once_as_it_was() -> None:
    model = Model(transient=1)
    plan = plan_of(1, 2)
    outcome = run_isolated(plan, model)
    assert model.ran == [plan, plan]
    assert outcome.result.tokens == {r: (1000 + r,) for r in range(3)}
    assert [type(e) for e in outcome.step_errors] == [RuntimeError]


def test_one_poisoned_row_fails_alone_with_its_own_message() -> None:
    model = Model({3})
    outcome = run_isolated(plan_of(2, 4), model)
    assert outcome.result.errors == {3: "the model failed on this request (ValueError)"}
    assert outcome.result.tokens == {r: (1000 + r,) for r in (0, 1, 2, 4, 5)}
    assert set(outcome.failed) == {3}
    assert isinstance(outcome.failed[3], ValueError)
    # No other request's message mentions the poison.
    assert all("poison" not in m for m in outcome.result.errors.values())


def test_a_single_row_step_that_keeps_failing_fails_that_row() -> None:
    outcome = run_isolated(plan_of(0, 1), Model({0}), describe=str)
    assert outcome.result.errors == {0: "the model failed on this request (poisoned by [0])"}
    assert outcome.runs == 2


def test_out_of_memory_sheds_the_newest_rows_without_a_plain_retry() -> None:
    model = Model(oom_above=2)
    plan = plan_of(0, 6)
    outcome = run_isolated(plan, model, out_of_memory=is_oom)
    # 6 rows: shed 3..5 and run 0..2 (still too many), shed 1..2 and run 0.
    assert outcome.result.tokens == {0: (1000,)}
    assert outcome.result.errors == dict.fromkeys((1, 2, 3, 4, 5), SHED_MESSAGE)
    assert [step_rows(p) for p in model.ran] == [(0, 1, 2, 3, 4, 5), (0, 1, 2), (0,)]


def test_a_step_of_releases_and_intermediate_chunks_only() -> None:
    # No row samples, so there is nothing to fail but there is still something to run.
    plan = plan_of(2, 0, last=False)
    outcome = run_isolated(plan, Model({1}))
    assert outcome.result.errors == {1: "the model failed on this request (ValueError)"}
    assert outcome.result.tokens == {}


@given(
    prefill=st.integers(0, 6),
    decode=st.integers(0, 10),
    poison=st.sets(st.integers(0, 15), max_size=4),
    transient=st.integers(0, 2),
    releases=st.integers(0, 2),
)
def test_narrowing_fails_exactly_the_poisoned_rows(
    prefill: int, decode: int, poison: set[int], transient: int, releases: int
) -> None:
    plan = plan_of(prefill, decode, releases=releases)
    rows = step_rows(plan)
    if not rows:
        return
    model = Model(poison, transient=transient)
    outcome = run_isolated(plan, model)
    bad = poison & set(rows)
    if transient >= 2:
        bad = set(rows) if len(rows) == 1 and not bad else bad
    # Every row ends one way or the other, never both.
    assert set(outcome.result.tokens) | set(outcome.result.errors) == set(rows)
    assert not set(outcome.result.tokens) & set(outcome.result.errors)
    if transient < 2 or len(rows) > 1:
        assert set(outcome.result.errors) == bad
    for request_id, tokens in outcome.result.tokens.items():
        assert tokens == (1000 + request_id,)
    # Releases: in the first run, in retries of a part that had them, never after a part
    # without them ran.
    with_releases = [bool(p.release) for p in model.ran]
    if releases:
        assert with_releases[0]
        first_without = with_releases.index(False) if False in with_releases else None
        if first_without is not None:
            assert not any(with_releases[first_without:])
    else:
        assert not any(with_releases)
    # Each part runs rows of the plan, in the plan's order.
    for part in model.ran:
        part_rows = step_rows(part)
        assert list(part_rows) == [r for r in rows if r in part_rows]
    # k bad rows among n cost O(k log n) runs.
    if bad:
        bound = 2 + transient + 2 * len(bad) * (math.ceil(math.log2(len(rows))) + 1)
        assert outcome.runs <= bound
