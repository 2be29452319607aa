"""The admission machine: at most N requests running, at most M waiting, first come first
served.

It decides only *who may run*. Each method returns the events its decision causes; the
engine adds the terminal ones. Slots are numbered 0..N-1 and handed out lowest first, so
a backend can keep per-slot state (a KV cache row) without reshuffling a batch.

With several model copies (a pool: one per GPU), the slots are split into contiguous
groups, one per copy, and a new request goes to the least-loaded group.

The original's semantics are kept, minus its off-by-ones: N generating + ``max_queue_size``
waiting are accepted and the next one is rejected; ``max_queue_size=0`` means no waiting
room at all (the original turned 0 and 1 into an unbounded queue).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import LocalProtocolError
from .events import (
    Admitted,
    Queued,
    QueuePositionChanged,
    Rejected,
    RejectReason,
    RequestId,
)

__all__ = ["Admission", "AdmissionEvent", "AdmissionStatistics", "SlotChooser"]

AdmissionEvent = Admitted | Queued | QueuePositionChanged | Rejected
#: Picks the slot a request takes, given the free slots of each group (see ``Admission``).
SlotChooser = Callable[[RequestId, Sequence[Sequence[int]]], int]


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionStatistics:
    """A snapshot of the admission machine."""

    #: Requests holding a slot.
    running: int
    #: Requests waiting for one.
    waiting: int
    #: Slots (``num_of_concurrent_executions``).
    capacity: int
    #: Waiting room (``max_queue_size``).
    max_waiting: int
    admitted_total: int
    rejected_total: int
    #: Requests cancelled while waiting or running.
    cancelled_total: int
    #: Requests that left their slot any other way.
    finished_total: int


class Admission:
    """FIFO admission with a bounded number of slots and a bounded waiting room.

    Args:
        choose_slot: which free slot an admitted request takes; by default the lowest in
            the least-loaded group. The engine's prefix directory uses it to send a request
            to the slot that already holds its prompt's beginning.
    """

    def __init__(
        self,
        *,
        capacity: int,
        max_waiting: int,
        groups: int = 1,
        choose_slot: SlotChooser | None = None,
    ) -> None:
        if capacity < 1 or max_waiting < 0 or not 1 <= groups <= capacity:
            raise LocalProtocolError(
                "capacity must be >= 1, max_waiting >= 0, and groups between 1 and capacity"
            )
        self.capacity = capacity
        self.max_waiting = max_waiting
        self._running: dict[RequestId, int] = {}
        self._waiting: list[RequestId] = []
        # One heap of free slots per group; group g holds slots [bounds[g], bounds[g + 1]).
        self.group_bounds = tuple(capacity * g // groups for g in range(groups + 1))
        self._free_slots = [
            list(range(self.group_bounds[g], self.group_bounds[g + 1])) for g in range(groups)
        ]
        self._admitted_total = 0
        self._rejected_total = 0
        self._cancelled_total = 0
        self._finished_total = 0
        self._choose_slot = choose_slot

    def submit(self, request_id: RequestId) -> AdmissionEvent:
        """A new request: admitted, queued, or rejected because the queue is full."""
        if request_id in self._running or request_id in self._waiting:
            raise LocalProtocolError(f"request id {request_id!r} is already in use")
        if any(self._free_slots):
            return self._admit(request_id)
        if len(self._waiting) < self.max_waiting:
            self._waiting.append(request_id)
            return Queued(request_id=request_id, position=len(self._waiting))
        return self.reject(request_id, RejectReason.QUEUE_FULL)

    def reject(self, request_id: RequestId, reason: RejectReason) -> Rejected:
        """Refuse a request that was never admitted or queued (counted as rejected)."""
        self._rejected_total += 1
        return Rejected(request_id=request_id, reason=reason)

    def cancel(self, request_id: RequestId) -> list[AdmissionEvent]:
        """Remove a waiting or running request; unknown ids are ignored."""
        if request_id in self._waiting:
            index = self._waiting.index(request_id)
            del self._waiting[index]
            self._cancelled_total += 1
            return self._moved_up(index)
        if request_id in self._running:
            self._cancelled_total += 1
            return self._release(request_id)
        return []

    def finish(self, request_id: RequestId) -> list[AdmissionEvent]:
        """A running request is done; its slot goes to the head of the queue."""
        if request_id not in self._running:
            raise LocalProtocolError(f"request {request_id!r} is not running")
        self._finished_total += 1
        return self._release(request_id)

    def slot_of(self, request_id: RequestId) -> int | None:
        return self._running.get(request_id)

    def is_waiting(self, request_id: RequestId) -> bool:
        return request_id in self._waiting

    @property
    def waiting(self) -> tuple[RequestId, ...]:
        """Waiting requests, next in line first."""
        return tuple(self._waiting)

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            running=len(self._running),
            waiting=len(self._waiting),
            capacity=self.capacity,
            max_waiting=self.max_waiting,
            admitted_total=self._admitted_total,
            rejected_total=self._rejected_total,
            cancelled_total=self._cancelled_total,
            finished_total=self._finished_total,
        )

    def _admit(self, request_id: RequestId) -> Admitted:
        if self._choose_slot is None:
            # The least-loaded group (most free slots); the lowest slot in it.
            slot = heapq.heappop(max(self._free_slots, key=len))
        else:
            slot = self._choose_slot(request_id, self._free_slots)
            group = self._free_slots[bisect.bisect_right(self.group_bounds, slot) - 1]
            if slot not in group:
                raise LocalProtocolError(f"slot {slot} is not free")
            group.remove(slot)
            heapq.heapify(group)
        self._running[request_id] = slot
        self._admitted_total += 1
        return Admitted(request_id=request_id, slot=slot)

    def _release(self, request_id: RequestId) -> list[AdmissionEvent]:
        slot = self._running.pop(request_id)
        group = bisect.bisect_right(self.group_bounds, slot) - 1
        heapq.heappush(self._free_slots[group], slot)
        if not self._waiting:
            return []
        head = self._waiting.pop(0)
        return [self._admit(head), *self._moved_up(0)]

    def _moved_up(self, start: int) -> list[AdmissionEvent]:
        # Everyone from `start` on moved one place closer to the front.
        return [
            QueuePositionChanged(request_id=rid, position=index + 1)
            for index, rid in enumerate(self._waiting[start:], start)
        ]
