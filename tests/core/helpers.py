"""Helpers shared by the core tests: a scripted model and an event drain."""

from __future__ import annotations

from collections.abc import Sequence

from chatstream.core import (
    NEED_INPUT,
    Engine,
    Output,
    StepCompleted,
    StepPlan,
)


class LetterTokenizer:
    """Token id n is the letter ``chr(ord("a") + n % 26)``; ids 0 and 1 are specials."""

    STOP = 0
    SPECIAL = 1

    def decode(self, token_ids: Sequence[int], /) -> str:
        return "".join(chr(ord("a") + t % 26) for t in token_ids if t > self.SPECIAL)


def drain(engine: Engine) -> list[Output]:
    """Every output the engine has now (h11's get_all_events)."""
    out: list[Output] = []
    while (event := engine.next_event()) is not NEED_INPUT:
        assert not isinstance(event, type(NEED_INPUT))
        out.append(event)
    return out


def answer(plan: StepPlan, token: int = 5) -> StepCompleted:
    """A model that samples ``token`` for every request that needs one."""
    sampled = [c.request_id for c in plan.prefill if c.last] + [d.request_id for d in plan.decode]
    return StepCompleted(step=plan.step, tokens=dict.fromkeys(sampled, (token,)))


def plans(events: Sequence[Output]) -> list[StepPlan]:
    return [e for e in events if isinstance(e, StepPlan)]
