"""The continuous-batching plan: what the model does in its next step.

All running requests advance together. Each step, every request that has a sampled token
takes one decode step; the rest of the per-step token budget goes to prompts waiting to be
prefilled, oldest first, in chunks, so a long prompt never stalls the streams already
running for longer than one chunk. A request joins the batch at the first step after its
admission and leaves it before the next step after it ends; its :class:`Release` rides on
that next step so the backend frees its memory first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import GenerationParams
from .events import DecodeItem, PrefillChunk, Release, RequestId, StepPlan

__all__ = ["Scheduler"]


@dataclass(slots=True, kw_only=True)
class _Running:
    request_id: RequestId
    slot: int
    prompt: tuple[int, ...]
    params: GenerationParams
    metadata: Mapping[str, Any]
    #: Prompt tokens already given to the model (planned, if a step is in flight).
    prefilled: int = 0
    #: Prompt tokens the slot held before the request came (prefix reuse).
    reused: int = 0
    #: Tokens sampled so far.
    generated: int = 0
    #: The token sampled last, to feed back at the next decode step.
    last_token: int | None = None


class Scheduler:
    """Keeps the model-side progress of running requests and plans steps."""

    def __init__(self, *, max_tokens_per_step: int) -> None:
        self.max_tokens_per_step = max_tokens_per_step
        # Insertion order is admission order: the oldest prompt is prefilled first.
        self._running: dict[RequestId, _Running] = {}
        self._released: list[Release] = []

    def add(
        self,
        request_id: RequestId,
        *,
        slot: int,
        prompt: tuple[int, ...],
        params: GenerationParams,
        metadata: Mapping[str, Any],
        reused: int = 0,
    ) -> None:
        """A newly admitted request; it joins the batch at the next step. Its slot already
        holds the KV of its first ``reused`` prompt tokens: prefill starts after them."""
        self._running[request_id] = _Running(
            request_id=request_id,
            slot=slot,
            prompt=prompt,
            params=params,
            metadata=metadata,
            prefilled=reused,
            reused=reused,
        )

    def remove(self, request_id: RequestId) -> None:
        """The request left; its model state is released at the next step."""
        running = self._running.pop(request_id)
        self._released.append(Release(request_id=request_id, slot=running.slot))

    def record(self, request_id: RequestId, token_ids: tuple[int, ...]) -> None:
        """Tokens the model sampled for a request in the last step."""
        running = self._running[request_id]
        running.generated += len(token_ids)
        running.last_token = token_ids[-1]

    def plan(self, step: int) -> StepPlan | None:
        """The next step, or None when there is nothing to do."""
        budget = self.max_tokens_per_step
        decode: list[DecodeItem] = []
        prefill: list[PrefillChunk] = []
        for r in self._running.values():
            if r.last_token is not None:
                decode.append(
                    DecodeItem(
                        request_id=r.request_id,
                        slot=r.slot,
                        token_id=r.last_token,
                        position=len(r.prompt) + r.generated - 1,
                        params=r.params,
                    )
                )
        budget -= len(decode)
        for r in self._running.values():
            remaining = len(r.prompt) - r.prefilled
            if remaining == 0:
                continue
            if budget <= 0:
                break
            size = min(remaining, budget)
            prefill.append(
                PrefillChunk(
                    request_id=r.request_id,
                    slot=r.slot,
                    token_ids=r.prompt[r.prefilled : r.prefilled + size],
                    start=r.prefilled,
                    last=size == remaining,
                    params=r.params,
                    metadata=r.metadata,
                    reused_ids=r.prompt[: r.reused] if r.prefilled == r.reused else (),
                )
            )
            r.prefilled += size
            budget -= size
        if not (decode or prefill or self._released):
            return None
        release, self._released = tuple(self._released), []
        return StepPlan(step=step, release=release, prefill=tuple(prefill), decode=tuple(decode))
