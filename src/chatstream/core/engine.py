"""The engine: admission, scheduling and decoding composed behind one driving surface.

An adapter drives it in the h11 manner::

    engine.send(Submit(...))             # inputs: Submit, Cancel, StepCompleted, ...
    while (event := engine.next_event()) is not NEED_INPUT:
        ...                              # route outputs: per-request events, StepPlans

Rule 1: every decision lives here or in the machines it composes; the adapter only moves
data. Rule 2: no I/O, no clock, no threads; time and tokens arrive as inputs.

At most one :class:`StepPlan` is in flight. The next plan is built lazily, when the adapter
asks for the next event after the previous step's result arrived, so every cancel that
arrived in the meantime is already taken into account.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .admission import Admission, AdmissionEvent, AdmissionStatistics
from .config import ChatStreamConfig, GenerationParams
from .decoding import Detokenizer, IncrementalDecoder
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    NEED_INPUT,
    Admitted,
    Cancel,
    DecodeItem,
    Drain,
    Finished,
    FinishReason,
    Input,
    ModelLost,
    Output,
    PrefillChunk,
    Rejected,
    RejectReason,
    RequestId,
    RestoreKV,
    Sentinel,
    StepCompleted,
    StepFailed,
    StepPlan,
    Submit,
    TextDelta,
    TokenLogprob,
    Usage,
)
from .prefix_cache import PrefixDirectory, PrefixStatistics
from .scheduler import Scheduler

__all__ = ["Engine", "EngineStatistics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineStatistics(AdmissionStatistics):
    """A snapshot of the engine (what ``/get_load`` and ``/metrics`` report): the admission
    figures, and these."""

    #: Tokens sampled for all requests so far.
    generated_tokens_total: int
    steps_total: int
    step_in_flight: bool
    draining: bool
    #: Set when the model is gone (:class:`ModelLost`); every request is then refused.
    lost: str | None
    #: Requests that ended in an error of the model so far.
    failed_total: int = 0
    #: Requests that ended in an error of the model since the last one that ended well: a
    #: model that fails everything (NaN weights, a broken device) shows here.
    consecutive_failures: int = 0
    #: The prefix directory's counters; None when prefix reuse is off.
    prefix: PrefixStatistics | None = None
    #: KV positions the running requests hold (their prompts and the tokens generated so
    #: far; the prefixes parked for reuse are not counted, as they give way on demand).
    kv_tokens_used: int = 0
    #: KV positions all slots can hold: slots times ``context_len``.
    kv_tokens_capacity: int = 0


@dataclass(slots=True, kw_only=True)
class _Request:
    request_id: RequestId
    prompt: tuple[int, ...]
    params: GenerationParams
    decoder: IncrementalDecoder
    metadata: Mapping[str, Any]
    generated: int = 0
    #: Prompt tokens its slot already held when it was admitted.
    reused: int = 0
    #: The host entry copied back into its slot for them, if any.
    restore: int | None = None
    #: Log-probabilities of tokens whose text has not been released yet.
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)


class Engine:
    """Composes admission, scheduling and decoding for one model.

    Args:
        config: capacity, queue size, context length and step budget.
        detokenizer: turns token ids into text (special tokens skipped).
        slot_groups: model copies sharing the slots (a pool); each new request goes to the
            copy that holds its prompt's beginning, else the least-loaded one.
        kv_bytes_per_token: what one token's KV takes in the backend, for the statistics.

    With ``config.prefix_cache``, a slot keeps the KV of its last request when it leaves,
    and a prompt that begins with the same token ids takes that slot and prefills only the
    rest (see :mod:`.prefix_cache`). The backend must honour
    :attr:`~.events.PrefillChunk.reused_ids`.
    """

    def __init__(
        self,
        config: ChatStreamConfig,
        detokenizer: Detokenizer,
        *,
        slot_groups: int = 1,
        kv_bytes_per_token: int = 0,
    ) -> None:
        self.config = config
        self._detokenizer = detokenizer
        self._admission = Admission(
            capacity=config.num_of_concurrent_executions,
            max_waiting=config.max_queue_size,
            groups=slot_groups,
            choose_slot=self._choose_slot if config.prefix_cache else None,
        )
        self._prefix = (
            PrefixDirectory(
                self._admission.group_bounds,
                kv_bytes_per_token=kv_bytes_per_token,
                host_budget_bytes=config.prefix_cache_mb * 2**20,
            )
            if config.prefix_cache
            else None
        )
        self._scheduler = Scheduler(max_tokens_per_step=config.max_tokens_per_step)
        self._requests: dict[RequestId, _Request] = {}
        self._outbox: deque[Output] = deque()
        self._in_flight: StepPlan | None = None
        self._next_step = 0
        self._generated_total = 0
        self._failed_total = 0
        self._consecutive_failures = 0
        self._draining = False
        self._lost: str | None = None

    # ------------------------------------------------------------------ driving surface

    def send(self, event: Input) -> None:
        """Feed one input. Outputs it causes are read with :meth:`next_event`.

        Raises:
            LocalProtocolError: a request id already in use, or an empty prompt.
            RemoteProtocolError: a step result that does not match the step in flight.
        """
        match event:
            case Submit():
                self._submit(event)
            case Cancel(request_id=request_id, error=error):
                self._cancel(request_id, error)
            case StepCompleted():
                self._step_completed(event)
            case StepFailed(step=step, message=message):
                plan = self._take_in_flight(step)
                if self._prefix is not None:
                    self._prefix.unsaved(plan.transfers)
                    for transfer in plan.transfers:
                        if isinstance(transfer, RestoreKV):
                            self._restore_failed(transfer, message)
                for request_id in _requests_in(plan):
                    self._fail(request_id, message)
            case ModelLost(message=message):
                self._lose_model(message)
            case Drain():
                self._draining = True
            case _:
                raise LocalProtocolError(f"not an engine input: {event!r}")

    def next_event(self) -> Output | Sentinel:
        """The next output, or :data:`NEED_INPUT` when only a new input can cause one."""
        if self._outbox:
            return self._outbox.popleft()
        if self._in_flight is None and self._lost is None:
            plan = self._scheduler.plan(self._next_step)
            if plan is not None:
                if self._prefix is not None:
                    plan = dataclasses.replace(plan, transfers=self._prefix.take_transfers())
                self._next_step += 1
                self._in_flight = plan
                return plan
        return NEED_INPUT

    def statistics(self) -> EngineStatistics:
        admission = self._admission.statistics()
        return EngineStatistics(
            **{f.name: getattr(admission, f.name) for f in dataclasses.fields(admission)},
            generated_tokens_total=self._generated_total,
            steps_total=self._next_step,
            step_in_flight=self._in_flight is not None,
            draining=self._draining,
            lost=self._lost,
            failed_total=self._failed_total,
            consecutive_failures=self._consecutive_failures,
            prefix=None if self._prefix is None else self._prefix.statistics(),
            kv_tokens_used=sum(
                len(request.prompt) + request.generated
                for request_id, request in self._requests.items()
                if self._admission.slot_of(request_id) is not None
            ),
            kv_tokens_capacity=admission.capacity * self.config.context_len,
        )

    @property
    def slot_groups(self) -> tuple[int, ...]:
        """Bounds of the slot groups: group g holds slots ``[b[g], b[g + 1])``."""
        return self._admission.group_bounds

    @property
    def waiting(self) -> tuple[RequestId, ...]:
        """Waiting requests, next in line first."""
        return self._admission.waiting

    def is_active(self, request_id: RequestId) -> bool:
        """True while a request has not had its terminal event."""
        return request_id in self._requests

    # ------------------------------------------------------------------ inputs

    def _submit(self, event: Submit) -> None:
        request_id = event.request_id
        if request_id in self._requests:
            raise LocalProtocolError(f"request id {request_id!r} is already in use")
        if not event.prompt_token_ids:
            raise LocalProtocolError("a prompt needs at least one token")
        reason = None
        if self._lost is not None:
            reason = RejectReason.UNAVAILABLE
        elif self._draining:
            reason = RejectReason.DRAINING
        elif len(event.prompt_token_ids) >= self.config.context_len:
            reason = RejectReason.PROMPT_TOO_LONG
        if reason is not None:
            self._outbox.append(self._admission.reject(request_id, reason))
            return
        options = event.decoding
        params = event.params
        if params.stop or params.ignore_eos or params.stop_token_ids:
            stop_ids = frozenset() if params.ignore_eos else options.stop_token_ids
            options = dataclasses.replace(
                options,
                stop_strings=options.stop_strings + params.stop,
                stop_token_ids=stop_ids | frozenset(params.stop_token_ids),
            )
        self._requests[request_id] = _Request(
            request_id=request_id,
            prompt=event.prompt_token_ids,
            params=event.params,
            decoder=IncrementalDecoder(
                self._detokenizer, options, context_token_ids=event.prompt_token_ids
            ),
            metadata=event.metadata,
        )
        outcome = self._admission.submit(request_id)
        if isinstance(outcome, Rejected):
            del self._requests[request_id]
        self._emit_admission([outcome])

    def _cancel(self, request_id: RequestId, error: str | None) -> None:
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        if self._admission.slot_of(request_id) is not None:
            self._leave_slot(request_id)
        admission_events = self._admission.cancel(request_id)
        reason = FinishReason.CANCELLED if error is None else FinishReason.ERROR
        self._outbox.append(self._finished(request, reason, error))
        self._emit_admission(admission_events)

    def _step_completed(self, event: StepCompleted) -> None:
        plan = self._take_in_flight(event.step)
        expected = _requests_in(plan)
        for request_id in (*event.tokens, *event.errors):
            if request_id not in expected:
                raise RemoteProtocolError(f"step {plan.step} had no request {request_id!r}")
        if self._prefix is not None:
            self._record_written(plan, event)
            for transfer in plan.transfers:
                if isinstance(transfer, RestoreKV) and transfer.request_id in event.errors:
                    self._restore_failed(transfer, event.errors[transfer.request_id])
        for request_id, message in event.errors.items():
            self._fail(request_id, message)
        sampling = [c.request_id for c in plan.prefill if c.last]
        sampling += [d.request_id for d in plan.decode]
        for request_id in sampling:
            if request_id in event.errors:
                continue
            tokens = event.tokens.get(request_id, ())
            if not tokens:
                self._fail(request_id, "the model returned no token")
            else:
                self._tokens(request_id, tuple(tokens), event.logprobs.get(request_id, ()))

    # ------------------------------------------------------------------ prefix reuse

    def _choose_slot(self, request_id: RequestId, free: Sequence[Sequence[int]]) -> int:
        assert self._prefix is not None
        request = self._requests[request_id]
        choice = self._prefix.choose(request.prompt, free)
        request.reused = choice.reused
        request.restore = choice.restore
        return choice.slot

    def _restore_failed(self, transfer: RestoreKV, message: str) -> None:
        """A copy back from host memory failed (or may not have run): the slot holds
        nothing reusable, and whoever reuses it now fails too."""
        assert self._prefix is not None
        owner = self._prefix.owner(transfer.slot)
        self._prefix.forget(transfer.slot)
        for request_id in {transfer.request_id, owner}:
            if request_id is not None:
                self._fail(request_id, message)

    def _record_written(self, plan: StepPlan, result: StepCompleted) -> None:
        """What the step wrote into each slot, for rows that did not fail: only KV whose
        step completed is ever reused."""
        assert self._prefix is not None
        items: list[PrefillChunk | DecodeItem] = [*plan.prefill, *plan.decode]
        for item in items:
            if item.request_id in result.errors:
                continue
            if isinstance(item, PrefillChunk):
                self._prefix.extend(item.slot, item.request_id, item.start, item.token_ids)
            else:
                self._prefix.extend(item.slot, item.request_id, item.position, (item.token_id,))

    def _leave_slot(self, request_id: RequestId, *, intact: bool = True) -> None:
        # Parked before admission hands the slot on, so that the next request may reuse it;
        # after a model error, with nothing in it (what it holds is not to be trusted).
        if self._prefix is not None:
            slot = self._admission.slot_of(request_id)
            assert slot is not None
            if not intact:
                self._prefix.forget(slot)
            self._prefix.park(slot, request_id)
        self._scheduler.remove(request_id)

    # ------------------------------------------------------------------ helpers

    def _take_in_flight(self, step: int) -> StepPlan:
        plan = self._in_flight
        if plan is None or plan.step != step:
            raise RemoteProtocolError(f"a result for step {step}, which is not in flight")
        self._in_flight = None
        return plan

    def _tokens(
        self,
        request_id: RequestId,
        tokens: tuple[int, ...],
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> None:
        request = self._requests.get(request_id)
        if request is None:  # cancelled while the step ran
            return
        stop_ids = request.decoder.options.stop_token_ids
        request.logprobs += (lp for lp in logprobs if lp.token_id not in stop_ids)
        request.generated += len(tokens)
        self._generated_total += len(tokens)
        self._scheduler.record(request_id, tokens)
        text = request.decoder.push(tokens)
        reason = None
        if request.decoder.stopped is not None:
            reason = FinishReason.STOP
        elif (
            request.generated >= request.params.max_new_tokens
            or len(request.prompt) + request.generated >= self.config.context_len
        ):
            reason = FinishReason.LENGTH
            text += request.decoder.finish()
        if text:
            self._outbox.append(
                TextDelta(request_id=request_id, text=text, logprobs=tuple(request.logprobs))
            )
            request.logprobs.clear()
        if reason is not None:
            self._end(request_id, reason)

    def _fail(self, request_id: RequestId, message: str) -> None:
        if request_id in self._requests:
            self._failed_total += 1
            self._consecutive_failures += 1
            self._end(request_id, FinishReason.ERROR, error=message)

    def _end(self, request_id: RequestId, reason: FinishReason, error: str | None = None) -> None:
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            self._consecutive_failures = 0
        request = self._requests.pop(request_id)
        self._leave_slot(request_id, intact=reason is not FinishReason.ERROR)
        admission_events = self._admission.finish(request_id)
        self._outbox.append(self._finished(request, reason, error))
        self._emit_admission(admission_events)

    def _lose_model(self, message: str) -> None:
        self._lost = message
        self._in_flight = None
        for request_id in list(self._requests):
            if self._admission.is_waiting(request_id):
                self._cancel_waiting_as_error(request_id, message)
        for request_id in list(self._requests):
            self._end(request_id, FinishReason.ERROR, error=message)
        if self._prefix is not None:
            self._prefix.forget()  # the model's memory went with it

    def _cancel_waiting_as_error(self, request_id: RequestId, message: str) -> None:
        request = self._requests.pop(request_id)
        self._admission.cancel(request_id)
        self._outbox.append(self._finished(request, FinishReason.ERROR, message))

    def _emit_admission(self, events: list[AdmissionEvent]) -> None:
        for event in events:
            if isinstance(event, Admitted):
                request = self._requests[event.request_id]
                if self._prefix is not None:
                    self._prefix.claim(
                        event.slot,
                        event.request_id,
                        len(request.prompt),
                        request.reused,
                        request.restore,
                    )
                self._scheduler.add(
                    event.request_id,
                    slot=event.slot,
                    prompt=request.prompt,
                    params=request.params,
                    metadata=request.metadata,
                    reused=request.reused,
                )
            self._outbox.append(event)

    def _finished(
        self, request: _Request, reason: FinishReason, error: str | None = None
    ) -> Finished:
        usage = Usage(
            prompt_tokens=len(request.prompt),
            completion_tokens=request.generated,
            cached_tokens=request.reused,
        )
        return Finished(request_id=request.request_id, reason=reason, usage=usage, error=error)


def _requests_in(plan: StepPlan) -> set[RequestId]:
    """The requests a step result may name: its rows, and those it restores a prefix for."""
    restoring = {t.request_id for t in plan.transfers if isinstance(t, RestoreKV)}
    return {c.request_id for c in plan.prefill} | {d.request_id for d in plan.decode} | restoring
