"""The prefix directory: which slot holds the KV of which token ids, and which free slot a
new request takes so that it prefills only what no slot holds.

A slot of the per-slot KV cache keeps what its last request fed the model after that
request leaves: the slot is *parked*, its KV intact until another request writes over it.
The next turn of a conversation renders a prompt that begins with the previous prompt and
reply; a regenerate, the previous prompt; an OpenAI client resends the history. When a new
request's token ids begin with a parked slot's, it takes that slot and only the rest of its
prompt is prefilled.

What is matched is token ids, never text: a chat template that renders earlier turns
differently, or a BPE merge across the seam between a reply and the next turn's markers,
reuses up to the first differing token only. What a slot holds is recorded only once the
step that wrote it completed (:meth:`PrefixDirectory.extend`), so a failed step, or one
still in flight, never leaves tokens behind whose KV was not written.

Choosing a slot (:meth:`PrefixDirectory.choose`), among the free ones:

1. A slot whose reuse saves more than it destroys (more of its tokens are reused than are
   written over): the one that saves the most. This is the next turn of its conversation
   (nothing destroyed), a regenerate (the old reply is destroyed, the whole prompt reused),
   an edit late in the conversation.
2. Otherwise a slot in the least-loaded group (model copy): an empty slot if there is one,
   else the least recently used parked slot, whose conversation is the one given up. It
   still reuses whatever it shares with the prompt (a common system prompt).

At least the prompt's last token is always prefilled: its logits give the first new token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import LocalProtocolError
from .events import RequestId

__all__ = ["PrefixDirectory", "PrefixStatistics", "SlotChoice", "common_prefix_length"]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items ``a`` and ``b`` share (both lists, or both tuples).

    Slices are compared in C and the length is bisected: O(n log n) item comparisons at C
    speed rather than a Python loop over every token.
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True, slots=True)
class SlotChoice:
    """The slot a request takes, and how many of its prompt's tokens that slot holds."""

    slot: int
    reused: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefixStatistics:
    """Counters of the prefix directory (what ``/metrics`` reports)."""

    #: Prompt tokens of every request that took a slot.
    queried_tokens: int
    #: Of those, tokens whose KV a slot already held (not prefilled again).
    hit_tokens: int
    #: Tokens held by slots whose request left (parked), ready for reuse.
    parked_tokens: int
    #: Their KV in bytes (0 when the backend does not say what a token's KV takes).
    parked_bytes: int = 0


@dataclass(slots=True)
class _Slot:
    #: The token ids whose KV the slot holds, positions 0 .. len - 1.
    tokens: list[int]
    #: The request writing into it, or None while it is parked.
    owner: RequestId | None = None
    #: When its last request left (a tick of the directory's own clock).
    parked_at: int = 0


class PrefixDirectory:
    """What every slot holds, and the slot choice that reuses it.

    Args:
        group_bounds: the slot groups (one per model copy): group g holds slots
            ``[group_bounds[g], group_bounds[g + 1])``; KV never moves between groups.
        kv_bytes_per_token: what one token's KV takes (all layers, keys and values), for
            the statistics.
    """

    def __init__(self, group_bounds: Sequence[int], *, kv_bytes_per_token: int = 0) -> None:
        self._bytes_per_token = kv_bytes_per_token
        self._slots = [_Slot([]) for _ in range(group_bounds[-1])]
        self._clock = 0
        self._queried = 0
        self._hits = 0

    def choose(self, prompt: Sequence[int], free: Sequence[Sequence[int]]) -> SlotChoice:
        """The free slot a request with this prompt should take (see the module's rules).

        Args:
            free: the free slots of each group, in group order; at least one.
        """
        ids = list(prompt)
        limit = len(ids) - 1  # the last token is always prefilled
        best: tuple[int, int, int] | None = None  # (saved, reused, slot)
        fallback: tuple[int, int, int] | None = None  # (group load, recency, slot)
        for slots in free:
            for slot in slots:
                held = self._slots[slot].tokens
                reused = min(common_prefix_length(ids, held), limit)
                saved = reused - (len(held) - reused)
                if reused > 0 and saved > 0 and (best is None or (saved, reused) > best[:2]):
                    best = (saved, reused, slot)
                # Empty slots first, then the least recently used; the least-loaded group.
                recency = self._slots[slot].parked_at if held else -1
                key = (-len(slots), recency, slot)
                if fallback is None or key < fallback:
                    fallback = key
        if best is not None:
            return SlotChoice(best[2], best[1])
        if fallback is None:
            raise LocalProtocolError("no free slot to choose from")
        slot = fallback[2]
        return SlotChoice(slot, min(common_prefix_length(ids, self._slots[slot].tokens), limit))

    def claim(self, slot: int, request_id: RequestId, prompt_tokens: int, reused: int) -> None:
        """A request takes a free slot, keeping its first ``reused`` tokens."""
        state = self._slots[slot]
        if state.owner is not None:
            raise LocalProtocolError(f"slot {slot} is taken by request {state.owner!r}")
        if not 0 <= reused <= len(state.tokens) or reused >= max(prompt_tokens, 1):
            raise LocalProtocolError(f"slot {slot} cannot reuse {reused} tokens")
        del state.tokens[reused:]
        state.owner = request_id
        self._queried += prompt_tokens
        self._hits += reused

    def extend(
        self, slot: int, request_id: RequestId, start: int, token_ids: Sequence[int]
    ) -> None:
        """A completed step wrote the KV of ``token_ids`` at positions ``start`` on.

        Ignored when the request no longer owns the slot (it left while the step ran).
        """
        state = self._slots[slot]
        if state.owner != request_id:
            return
        if start != len(state.tokens):
            raise LocalProtocolError(
                f"slot {slot} holds {len(state.tokens)} tokens, not {start}: a gap or overlap"
            )
        state.tokens.extend(token_ids)

    def park(self, slot: int, request_id: RequestId) -> None:
        """The request left its slot; what it wrote stays for the next one to reuse."""
        state = self._slots[slot]
        if state.owner != request_id:
            raise LocalProtocolError(f"slot {slot} is not held by request {request_id!r}")
        self._clock += 1
        state.owner = None
        state.parked_at = self._clock

    def forget(self, slot: int | None = None) -> None:
        """The KV of a slot (or of every slot) is gone: nothing is reused from it."""
        for index in range(len(self._slots)) if slot is None else (slot,):
            self._slots[index].tokens.clear()

    def held(self, slot: int) -> tuple[int, ...]:
        """The token ids whose KV the slot holds."""
        return tuple(self._slots[slot].tokens)

    def statistics(self) -> PrefixStatistics:
        parked = sum(len(s.tokens) for s in self._slots if s.owner is None)
        return PrefixStatistics(
            queried_tokens=self._queried,
            hit_tokens=self._hits,
            parked_tokens=parked,
            parked_bytes=parked * self._bytes_per_token,
        )
