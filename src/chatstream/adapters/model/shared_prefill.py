"""Prefill sharing between live slots: a prompt whose beginning another slot already holds
copies that KV instead of computing it.

The engine's prefix directory reuses what a *free* slot holds (a parked conversation). This
covers the slots that are busy: the ``n`` choices of one OpenAI request (the same prompt in n
slots), and concurrent requests that open with the same long system prompt. The KV of a token
depends only on the tokens before it and its position, so a copy of another slot's columns is
what the prefill would have written (up to float rounding of a different batch shape).

:class:`HeldTokens` keeps, per slot, the token ids whose KV the slot holds by position, and
plans the copies of a step's first prefill chunks: a chunk that shares at least
:data:`MIN_SHARED_TOKENS` beyond its start with a slot that holds them is shortened to the rest
(at least its last token stays, for the logits), the copy going first. Chunks of one step that
repeat each other (the n choices, admitted together) are split in two rounds: the leaders are
prefilled, then the followers copy from them. Pure bookkeeping: the backend does the copies and
the forwards. Written here because no library tracks KV ownership of this slot cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chatstream.core import PrefillChunk, common_prefix_length

__all__ = ["MIN_SHARED_TOKENS", "HeldTokens", "SharedCopy"]

#: Fewer shared tokens are computed rather than copied (a copy of every layer's keys and values
#: costs more than computing a few rows inside a batch).
MIN_SHARED_TOKENS = 16


@dataclass(frozen=True, slots=True)
class SharedCopy:
    """Copy positions ``0 .. length - 1`` of slot ``source`` into slot ``target``."""

    source: int
    target: int
    length: int


class HeldTokens:
    """The token ids whose KV each slot holds, position by position."""

    def __init__(self, num_slots: int) -> None:
        self._held: list[list[int]] = [[] for _ in range(num_slots)]

    def held(self, slot: int) -> tuple[int, ...]:
        return tuple(self._held[slot])

    # Recording what the model wrote -----------------------------------------

    def prefilled(self, chunk: PrefillChunk) -> None:
        """``chunk`` was written into its slot."""
        before = list(chunk.reused_ids) if chunk.first else self._held[chunk.slot][: chunk.start]
        self._held[chunk.slot] = before + list(chunk.token_ids)

    def decoded(self, slot: int, token_id: int, position: int) -> None:
        """``token_id`` was written at ``position`` of ``slot``."""
        held = self._held[slot]
        del held[position:]
        held.append(token_id)

    def forget(self, slots: Iterable[int]) -> None:
        """What these slots hold is not known any more (a failed write, a restore)."""
        for slot in slots:
            self._held[slot] = []

    # Planning copies ---------------------------------------------------------

    def split_followers(
        self, chunks: Sequence[PrefillChunk]
    ) -> tuple[tuple[PrefillChunk, ...], tuple[PrefillChunk, ...]]:
        """(leaders, followers): a follower is a first chunk that shares more with a leader of
        this step than with any slot now, by at least :data:`MIN_SHARED_TOKENS` beyond its
        start; it is prefilled after the leaders, copying from them."""
        leaders: list[PrefillChunk] = []
        followers: list[PrefillChunk] = []
        for chunk in chunks:
            wanted = _wanted(chunk)
            if chunk.first and leaders:
                settled = self._best(wanted, chunk.slot)[1]
                ahead = max(
                    (
                        common_prefix_length(wanted, _wanted(leader))
                        for leader in leaders
                        if leader.first
                    ),
                    default=0,
                )
                if ahead - chunk.start >= MIN_SHARED_TOKENS and ahead > settled:
                    followers.append(chunk)
                    continue
            leaders.append(chunk)
        return tuple(leaders), tuple(followers)

    def plan_copies(
        self, chunks: Sequence[PrefillChunk]
    ) -> tuple[tuple[PrefillChunk, ...], tuple[SharedCopy, ...]]:
        """The chunks shortened by what other slots hold, and the copies to make first. Slots
        written by these chunks are never sources (their KV is about to change)."""
        written = {chunk.slot for chunk in chunks}
        out: list[PrefillChunk] = []
        copies: list[SharedCopy] = []
        for chunk in chunks:
            if not chunk.first:
                out.append(chunk)
                continue
            wanted = _wanted(chunk)
            source, common = self._best(wanted, chunk.slot, exclude=written)
            # The last token of a prompt is always computed: its logits give the next token.
            keep = 1 if chunk.last else 0
            shared = min(common - chunk.start, len(chunk.token_ids) - keep)
            if source is None or shared < MIN_SHARED_TOKENS:
                out.append(chunk)
                continue
            length = chunk.start + shared
            copies.append(SharedCopy(source, chunk.slot, length))
            out.append(
                dataclasses.replace(
                    chunk,
                    token_ids=chunk.token_ids[shared:],
                    start=length,
                    reused_ids=wanted[:length],
                )
            )
        return tuple(out), tuple(copies)

    def _best(
        self, wanted: tuple[int, ...], slot: int, exclude: set[int] | frozenset[int] = frozenset()
    ) -> tuple[int | None, int]:
        """The slot (other than ``slot``) holding the longest beginning of ``wanted``."""
        best: int | None = None
        best_length = 0
        as_list = list(wanted)  # compared slice by slice with the held lists
        for other, held in enumerate(self._held):
            if other == slot or other in exclude or not held:
                continue
            length = common_prefix_length(held, as_list)
            if length > best_length:
                best, best_length = other, length
        return best, best_length


def _wanted(chunk: PrefillChunk) -> tuple[int, ...]:
    """What a first chunk's slot will hold: the reused beginning, then the chunk."""
    return (*chunk.reused_ids, *chunk.token_ids)
