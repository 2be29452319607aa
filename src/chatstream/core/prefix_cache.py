"""The prefix directory: which slot holds the KV of which token ids, and which free slot a
new request takes so that it prefills only what no slot holds; and what host memory keeps of
conversations no slot holds any more.

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

Host memory (``host_budget_bytes``): when a claim writes over a parked slot's conversation,
that conversation is first saved to host memory (:class:`~.events.SaveKV`), if it is long
enough to be worth a copy and no saved entry already covers it; entries it extends are
dropped, and the oldest entries are evicted (:class:`~.events.DropKV`) until the budget
holds it. A prompt that shares more with a saved entry than with any free slot takes a slot
of that entry's group and the entry is copied back into it (:class:`~.events.RestoreKV`),
which frees the entry. Every entry is freed exactly once: restored, evicted, or forgotten
with the model. The copies ride on the next step (:meth:`PrefixDirectory.take_transfers`),
in the order they were decided, before anything writes into a slot.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .errors import LocalProtocolError
from .events import DropKV, KVTransfer, RequestId, RestoreKV, SaveKV

__all__ = [
    "MIN_SAVED_TOKENS",
    "PrefixDirectory",
    "PrefixStatistics",
    "SlotChoice",
    "common_prefix_length",
]

#: A parked conversation is copied to host memory only when a claim would write over at
#: least this many of its tokens (and it holds at least this many).
MIN_SAVED_TOKENS = 32


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
    """The slot a request takes, and how many of its prompt's tokens that slot holds (once
    host entry ``restore``, if any, is copied back into it)."""

    slot: int
    reused: int
    restore: int | None = None


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
    #: Tokens held in host memory, and their bytes (never above the budget).
    stored_tokens: int = 0
    stored_bytes: int = 0
    stored_entries: int = 0
    #: Of ``hit_tokens``, those copied back from host memory.
    restored_tokens: int = 0


@dataclass(slots=True)
class _Slot:
    #: The token ids whose KV the slot holds, positions 0 .. len - 1.
    tokens: list[int]
    #: The group (model copy) it belongs to.
    group: int
    #: The request writing into it, or None while it is parked.
    owner: RequestId | None = None
    #: When its last request left (a tick of the directory's own clock).
    parked_at: int = 0


@dataclass(frozen=True, slots=True)
class _Entry:
    tokens: tuple[int, ...]
    group: int


class PrefixDirectory:
    """What every slot and every host entry holds, and the slot choice that reuses it.

    Args:
        group_bounds: the slot groups (one per model copy): group g holds slots
            ``[group_bounds[g], group_bounds[g + 1])``; KV never moves between groups.
        kv_bytes_per_token: what one token's KV takes (all layers, keys and values), for
            the statistics and the host budget.
        host_budget_bytes: host memory for conversations no slot holds any more; 0 (or an
            unknown ``kv_bytes_per_token``) keeps none.
    """

    def __init__(
        self,
        group_bounds: Sequence[int],
        *,
        kv_bytes_per_token: int = 0,
        host_budget_bytes: int = 0,
    ) -> None:
        self._bytes_per_token = kv_bytes_per_token
        self._budget = host_budget_bytes if kv_bytes_per_token > 0 else 0
        self._slots = [
            _Slot([], group)
            for group in range(len(group_bounds) - 1)
            for _ in range(group_bounds[group], group_bounds[group + 1])
        ]
        self._clock = 0
        self._queried = 0
        self._hits = 0
        self._restored = 0
        #: Host entries, oldest first (the eviction order).
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._stored_tokens = 0
        self._next_entry = 0
        self._next_transfer = 0
        self._transfers: list[KVTransfer] = []

    @property
    def host_budget_bytes(self) -> int:
        return self._budget

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
                key = self._fallback_key(slot, len(slots))
                if fallback is None or key < fallback:
                    fallback = key
        if fallback is None:
            raise LocalProtocolError("no free slot to choose from")
        if best is not None:
            choice = SlotChoice(best[2], best[1])
        else:
            slot = fallback[2]
            choice = SlotChoice(
                slot, min(common_prefix_length(ids, self._slots[slot].tokens), limit)
            )
        restore = self._best_entry(ids, limit, free)
        if restore is None or restore[0] <= choice.reused:
            return choice
        reused, entry, group = restore
        slots = free[group]
        slot = min(self._fallback_key(slot, len(slots)) for slot in slots)[2]
        return SlotChoice(slot, reused, restore=entry)

    def _fallback_key(self, slot: int, group_free: int) -> tuple[int, int, int]:
        # Empty slots first, then the least recently used; the least-loaded group.
        state = self._slots[slot]
        return (-group_free, state.parked_at if state.tokens else -1, slot)

    def _best_entry(
        self, ids: list[int], limit: int, free: Sequence[Sequence[int]]
    ) -> tuple[int, int, int] | None:
        """(reused, entry, group index in ``free``) of the entry the prompt shares most
        with, among the groups that have a free slot; the newest on a tie."""
        groups = {self._slots[slots[0]].group: index for index, slots in enumerate(free) if slots}
        best: tuple[int, int, int] | None = None
        prompt = tuple(ids)  # entries hold tuples: compared with tuples
        for entry_id, entry in self._entries.items():
            index = groups.get(entry.group)
            if index is None:
                continue
            reused = min(common_prefix_length(prompt, entry.tokens), limit)
            if reused > 0 and (best is None or reused >= best[0]):
                best = (reused, entry_id, index)
        return best

    def claim(
        self,
        slot: int,
        request_id: RequestId,
        prompt_tokens: int,
        reused: int,
        restore: int | None = None,
    ) -> None:
        """A request takes a free slot, keeping its first ``reused`` tokens (those of host
        entry ``restore``, copied back into it, if given)."""
        state = self._slots[slot]
        if state.owner is not None:
            raise LocalProtocolError(f"slot {slot} is taken by request {state.owner!r}")
        if restore is None:
            source: Sequence[int] = state.tokens
        else:
            entry = self._entries.get(restore)
            if entry is None or entry.group != state.group:
                raise LocalProtocolError(f"no host entry {restore} for slot {slot}")
            source = entry.tokens
        if not 0 <= reused <= len(source) or reused >= max(prompt_tokens, 1):
            raise LocalProtocolError(f"slot {slot} cannot reuse {reused} tokens")
        kept = list(source[:reused])
        if restore is not None:
            # Out of reach of eviction, still counted: the backend holds it until restored.
            del self._entries[restore]
        if len(state.tokens) - common_prefix_length(kept, state.tokens) >= MIN_SAVED_TOKENS:
            # Its conversation is about to be written over (not just a seam of a few tokens).
            self._save(slot)
        if restore is not None:
            self._stored_tokens -= len(source)
            self._emit(
                RestoreKV(
                    transfer=0, entry=restore, slot=slot, length=reused, request_id=request_id
                )
            )
            self._restored += reused
        state.tokens = kept
        state.owner = request_id
        self._queried += prompt_tokens
        self._hits += reused

    def _save(self, slot: int) -> None:
        state = self._slots[slot]
        tokens = tuple(state.tokens)
        size = len(tokens) * self._bytes_per_token
        # An entry being restored is counted until then but cannot be evicted.
        pinned = self._stored_tokens - sum(len(e.tokens) for e in self._entries.values())
        if len(tokens) < MIN_SAVED_TOKENS or pinned * self._bytes_per_token + size > self._budget:
            return
        same_group = [(i, e) for i, e in self._entries.items() if e.group == state.group]
        if any(e.tokens[: len(tokens)] == tokens for _, e in same_group):
            return  # an entry already holds all of it
        for entry_id, entry in same_group:
            if tokens[: len(entry.tokens)] == entry.tokens:
                self._drop(entry_id)  # this one holds all of that entry, and more
        while self._stored_tokens * self._bytes_per_token + size > self._budget:
            self._drop(next(iter(self._entries)))  # the oldest
        entry_id = self._next_entry
        self._next_entry += 1
        self._entries[entry_id] = _Entry(tokens, state.group)
        self._stored_tokens += len(tokens)
        self._emit(SaveKV(transfer=0, entry=entry_id, slot=slot, length=len(tokens)))

    def _drop(self, entry_id: int) -> None:
        group = self._remove_entry(entry_id).group
        self._emit(DropKV(transfer=0, entry=entry_id, group=group))

    def _remove_entry(self, entry_id: int) -> _Entry:
        entry = self._entries.pop(entry_id)
        self._stored_tokens -= len(entry.tokens)
        return entry

    def _emit(self, transfer: KVTransfer) -> None:
        self._transfers.append(replace(transfer, transfer=self._next_transfer))
        self._next_transfer += 1

    def take_transfers(self) -> tuple[KVTransfer, ...]:
        """The copies decided since the last call, in order, for the next step."""
        transfers, self._transfers = tuple(self._transfers), []
        return transfers

    def unsaved(self, transfers: Sequence[KVTransfer]) -> None:
        """These transfers may not have run (their step failed): their saved entries are
        dropped, so nothing is ever restored from an entry that was not written."""
        for transfer in transfers:
            if isinstance(transfer, SaveKV) and transfer.entry in self._entries:
                self._drop(transfer.entry)

    def owner(self, slot: int) -> RequestId | None:
        """The request writing into a slot, or None while it is parked."""
        return self._slots[slot].owner

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
        """The KV of a slot is gone: nothing is reused from it. Without a slot, the model
        is gone, and with it every slot's KV and every host entry (no transfer is left)."""
        for index in range(len(self._slots)) if slot is None else (slot,):
            self._slots[index].tokens.clear()
        if slot is None:
            self._entries.clear()
            self._stored_tokens = 0
            self._transfers.clear()

    def held(self, slot: int) -> tuple[int, ...]:
        """The token ids whose KV the slot holds."""
        return tuple(self._slots[slot].tokens)

    def stored(self) -> dict[int, tuple[int, ...]]:
        """The host entries, oldest first: entry id to the token ids it holds."""
        return {entry_id: entry.tokens for entry_id, entry in self._entries.items()}

    def statistics(self) -> PrefixStatistics:
        parked = sum(len(s.tokens) for s in self._slots if s.owner is None)
        return PrefixStatistics(
            queried_tokens=self._queried,
            hit_tokens=self._hits,
            parked_tokens=parked,
            parked_bytes=parked * self._bytes_per_token,
            stored_tokens=self._stored_tokens,
            stored_bytes=self._stored_tokens * self._bytes_per_token,
            stored_entries=len(self._entries),
            restored_tokens=self._restored,
        )
