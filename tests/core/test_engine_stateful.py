"""Random submit / cancel / step / failure sequences against the engine, with invariants.

Invariants checked after every input: running <= N, waiting <= M, first come first served,
exactly one terminal event per request and nothing after it, queue positions contiguous,
no slot ever lost or shared, plans within the token budget, and the text streamed for a
request equal to what its tokens decode to.

With prefix reuse on, the test keeps what each slot's KV holds as a model would (a failed
row or step writes garbage), and every reused prefix must be exactly what the slot holds
and what the prompt begins with. Prompts often continue an earlier request's prompt and
reply, as the next turn of a conversation does.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from hypothesis import event as note_event
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from chatstream.core import (
    MIN_SAVED_TOKENS,
    Admitted,
    Cancel,
    ChatStreamConfig,
    DecodeItem,
    DecodingOptions,
    Drain,
    DropKV,
    Engine,
    Finished,
    FinishReason,
    GenerationParams,
    ModelLost,
    PrefillChunk,
    Queued,
    QueuePositionChanged,
    Rejected,
    RejectReason,
    RestoreKV,
    SaveKV,
    StepCompleted,
    StepFailed,
    StepPlan,
    Submit,
    TextDelta,
)

from .helpers import LetterTokenizer, drain

#: With this, each MiB of host budget holds MIN_SAVED_TOKENS tokens.
BYTES_PER_TOKEN = 2**20 // MIN_SAVED_TOKENS


class EngineMachine(RuleBasedStateMachine):
    @initialize(
        capacity=st.integers(1, 4),
        max_waiting=st.integers(0, 4),
        extra_budget=st.integers(1, 12),
        data=st.data(),
    )
    def setup(
        self, capacity: int, max_waiting: int, extra_budget: int, data: st.DataObject
    ) -> None:
        self.config = ChatStreamConfig(
            num_of_concurrent_executions=capacity,
            max_queue_size=max_waiting,
            max_new_tokens=6,
            context_len=80,
            max_tokens_per_step=capacity + extra_budget,
        )
        self.tokenizer = LetterTokenizer()
        self.groups = data.draw(st.integers(1, capacity), label="slot groups")
        self.prefix_cache = data.draw(st.booleans(), label="prefix cache")
        # Host memory for 0 to 3 saved conversations of MIN_SAVED_TOKENS tokens.
        mib = data.draw(st.integers(0, 3), label="host MiB")
        self.config = dataclasses.replace(
            self.config, prefix_cache=self.prefix_cache, prefix_cache_mb=mib
        )
        self.budget = mib * 2**20
        self.engine = Engine(
            self.config,
            self.tokenizer,
            slot_groups=self.groups,
            kv_bytes_per_token=BYTES_PER_TOKEN,
        )
        #: What each host entry holds, as a backend would; entries freed so far.
        self.host: dict[int, list[int | None]] = {}
        self.freed: set[int] = set()
        #: Entries whose save may not have run (their step failed).
        self.unsaved: set[int] = set()
        #: What each slot's KV holds, position by position (None: garbage).
        self.kv: dict[int, list[int | None]] = defaultdict(list)
        self.prompts: dict[int, tuple[int, ...]] = {}
        self.reused: dict[int, int] = {}
        self.next_id = 0
        self.plan: StepPlan | None = None
        self.terminal: dict[int, object] = {}
        self.running: dict[int, int] = {}  # request id -> slot
        self.waiting: list[int] = []  # queue order as the test saw it
        self.positions: dict[int, int] = {}
        self.tokens: dict[int, list[int]] = defaultdict(list)
        self.text: dict[int, str] = defaultdict(str)
        self.prompt_len: dict[int, int] = {}
        self.lost = False
        self.draining = False

    # ------------------------------------------------------------------ rules

    @rule(
        prompt_len=st.integers(1, 85) | st.sampled_from([40, 60, 79, 80]),
        max_new=st.integers(1, 6),
        data=st.data(),
    )
    def submit(self, prompt_len: int, max_new: int, data: st.DataObject) -> None:
        request_id = self.next_id
        self.next_id += 1
        # A fresh prompt: one of a few openings (a shared system prompt), or its own ids.
        opening = data.draw(st.integers(0, 3), label="opening")
        prompt = tuple(range(2 + opening * 100, 2 + opening * 100 + prompt_len))
        continues: bool = data.draw(st.booleans(), label="continue a conversation")
        if self.prompts and continues:
            # An earlier prompt and its reply (or part of it), then the next turn's ids.
            earlier = data.draw(st.sampled_from(sorted(self.prompts)), label="earlier")
            reply = [t for t in self.tokens.get(earlier, []) if t != LetterTokenizer.STOP]
            kept = data.draw(st.integers(0, len(self.prompts[earlier]) + len(reply)))
            turn = data.draw(st.lists(st.integers(2, 9), min_size=1, max_size=40))
            prompt = (*self.prompts[earlier], *reply)[:kept] + tuple(turn)
        prompt_len = len(prompt)
        self.prompts[request_id] = prompt
        self.prompt_len[request_id] = prompt_len
        self.engine.send(
            Submit(
                request_id=request_id,
                prompt_token_ids=prompt,
                params=GenerationParams(max_new_tokens=max_new),
                decoding=DecodingOptions(stop_token_ids=frozenset({LetterTokenizer.STOP})),
            )
        )
        self.absorb()
        assert (
            request_id in self.terminal
            or request_id in self.running
            or (request_id in self.waiting)
        )
        if prompt_len >= self.config.context_len and not (self.draining or self.lost):
            assert self.terminal[request_id] == RejectReason.PROMPT_TOO_LONG

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        request_id = data.draw(st.integers(0, self.next_id + 1))
        was_active = request_id in self.running or request_id in self.waiting
        self.engine.send(Cancel(request_id=request_id))
        self.absorb()
        if was_active:
            assert self.terminal[request_id] == FinishReason.CANCELLED

    @precondition(lambda self: self.plan is not None)
    @rule(data=st.data())
    def complete_step(self, data: st.DataObject) -> None:
        plan = self.plan
        assert plan is not None
        self.plan = None
        sampled = [c.request_id for c in plan.prefill if c.last]
        sampled += [d.request_id for d in plan.decode]
        tokens: dict[int, tuple[int, ...]] = {}
        errors: dict[int, str] = {}
        for request_id in sampled:
            outcome = data.draw(st.sampled_from(["token"] * 12 + ["stop", "error"]))
            if outcome == "error":
                errors[request_id] = "boom"
            else:
                token = LetterTokenizer.STOP if outcome == "stop" else data.draw(st.integers(1, 30))
                tokens[request_id] = (token,)
        for transfer in plan.transfers:
            if isinstance(transfer, RestoreKV) and data.draw(st.integers(0, 4), label="lost") == 3:
                # The copy back failed half-way: the slot holds garbage.
                errors[transfer.request_id] = "restore failed"
                self.kv[transfer.slot][: transfer.length] = [None] * transfer.length
                tokens.pop(transfer.request_id, None)
        if data.draw(st.integers(0, 9), label="the prefill rows fail") == 7:
            errors.update(dict.fromkeys((c.request_id for c in plan.prefill), "bad prompt"))
            for request_id in errors:
                tokens.pop(request_id, None)
        for request_id, token_ids in tokens.items():
            if request_id not in self.terminal:
                self.tokens[request_id].extend(token_ids)
        self.write_kv(plan, set(errors))
        self.engine.send(StepCompleted(step=plan.step, tokens=tokens, errors=errors))
        self.absorb()
        for request_id in errors:
            assert request_id in self.terminal

    @precondition(lambda self: self.plan is not None)
    @rule(data=st.data())
    def fail_step(self, data: st.DataObject) -> None:
        if data.draw(st.integers(0, 9), label="chance") != 7:
            return  # rarely (not a bound: Hypothesis favours those)
        plan = self.plan
        assert plan is not None
        self.plan = None
        for transfer in plan.transfers:
            if isinstance(transfer, SaveKV) and data.draw(st.booleans(), label="save lost"):
                self.host.pop(transfer.entry, None)
                self.unsaved.add(transfer.entry)
        items: list[PrefillChunk | DecodeItem] = [*plan.prefill, *plan.decode]
        self.write_kv(plan, {i.request_id for i in items})
        self.engine.send(StepFailed(step=plan.step, message="out of memory"))
        self.absorb()
        for chunk in plan.prefill:
            assert chunk.request_id in self.terminal
        for decode in plan.decode:
            assert decode.request_id in self.terminal

    @precondition(lambda self: not self.draining)
    @rule(chance=st.integers(0, 9))
    def drain_engine(self, chance: int) -> None:
        if chance != 7:  # rarely (not a bound: Hypothesis favours those)
            return
        self.draining = True
        self.engine.send(Drain())
        self.absorb()

    @precondition(lambda self: not self.lost and self.next_id > 3)
    @rule(chance=st.integers(0, 9))
    def lose_model(self, chance: int) -> None:
        if chance != 7:  # rarely (not a bound: Hypothesis favours those)
            return
        self.lost = True
        self.plan = None
        self.engine.send(ModelLost(message="thread died"))
        self.kv.clear()  # the model's memory is gone
        self.host.clear()
        self.absorb()
        assert not self.running
        assert not self.waiting

    # ------------------------------------------------------------------ bookkeeping

    def absorb(self) -> None:
        for event in drain(self.engine):
            request_id = getattr(event, "request_id", None)
            if request_id is not None:
                assert request_id not in self.terminal, f"event after terminal: {event}"
            match event:
                case Queued(request_id=rid, position=position):
                    assert rid not in self.running and rid not in self.waiting
                    self.waiting.append(rid)
                    assert position == len(self.waiting)
                    self.positions[rid] = position
                case QueuePositionChanged(request_id=rid, position=position):
                    assert position < self.positions[rid]
                    self.positions[rid] = position
                case Admitted(request_id=rid, slot=slot):
                    if rid in self.waiting:
                        # First come, first served: only the head of the line is admitted.
                        assert self.waiting[0] == rid
                        self.waiting.remove(rid)
                    assert slot not in self.running.values()
                    assert 0 <= slot < self.config.num_of_concurrent_executions
                    if not self.prefix_cache:
                        self.check_least_loaded(slot)
                    self.running[rid] = slot
                case Rejected(request_id=rid, reason=reason):
                    assert rid not in self.running and rid not in self.waiting
                    if reason is RejectReason.QUEUE_FULL:
                        assert len(self.running) == self.config.num_of_concurrent_executions
                        assert len(self.waiting) == self.config.max_queue_size
                    if self.lost:
                        assert reason is RejectReason.UNAVAILABLE
                    elif self.draining:
                        assert reason in (RejectReason.DRAINING, RejectReason.PROMPT_TOO_LONG)
                    self.terminal[rid] = reason
                case TextDelta(request_id=rid, text=text):
                    assert rid in self.running
                    assert text
                    self.text[rid] += text
                case Finished(request_id=rid, reason=reason, usage=usage):
                    self.terminal[rid] = reason
                    self.running.pop(rid, None)
                    if rid in self.waiting:
                        self.waiting.remove(rid)
                    produced = self.tokens.get(rid, [])
                    assert usage.completion_tokens == len(produced)
                    assert usage.prompt_tokens == self.prompt_len[rid]
                    assert 0 <= usage.cached_tokens < max(usage.prompt_tokens, 1)
                    if rid in self.reused:
                        assert usage.cached_tokens == self.reused[rid]
                    if not self.prefix_cache:
                        assert usage.cached_tokens == 0
                    generated = produced
                    if LetterTokenizer.STOP in produced:
                        assert reason is FinishReason.STOP
                        generated = produced[: produced.index(LetterTokenizer.STOP)]
                    assert self.text[rid] == self.tokenizer.decode(generated)
                case StepPlan():
                    assert self.plan is None, "two steps in flight"
                    self.plan = event
                    self.run_transfers(event)
                    self.check_plan(event)
        # Positions must be 1..waiting in queue order after every input.
        for index, rid in enumerate(self.waiting, 1):
            assert self.positions[rid] == index

    def check_least_loaded(self, slot: int) -> None:
        # The slot came from a group with the most free slots at that moment.
        bounds = self.engine.slot_groups
        used = set(self.running.values())

        def free(group: int) -> int:
            return sum(s not in used for s in range(bounds[group], bounds[group + 1]))

        chosen = next(g for g in range(self.groups) if bounds[g] <= slot < bounds[g + 1])
        assert free(chosen) == max(free(g) for g in range(self.groups))
        assert slot == min(s for s in range(bounds[chosen], bounds[chosen + 1]) if s not in used)

    def check_plan(self, plan: StepPlan) -> None:
        assert plan.num_tokens <= self.config.max_tokens_per_step
        items: list[PrefillChunk | DecodeItem] = [*plan.prefill, *plan.decode]
        ids = [i.request_id for i in items]
        assert len(ids) == len(set(ids))
        for item in items:
            assert item.request_id in self.running
            assert self.running[item.request_id] == item.slot
        for release in plan.release:
            assert release.request_id in self.terminal
        for chunk in plan.prefill:
            prompt = self.prompts[chunk.request_id]
            assert chunk.token_ids == prompt[chunk.start : chunk.start + len(chunk.token_ids)]
            if chunk.first:
                self.reused[chunk.request_id] = chunk.start
                # Never reuse KV of other token ids: the slot holds exactly the reused ids,
                # and they are the prompt's beginning.
                assert chunk.reused_ids == prompt[: chunk.start]
                assert self.kv[chunk.slot][: chunk.start] == list(chunk.reused_ids)
                assert chunk.start < len(prompt)
                if chunk.start:
                    note_event("a prompt reused a slot's prefix")
                if not self.prefix_cache:
                    assert chunk.start == 0

    def run_transfers(self, plan: StepPlan) -> None:
        """Copies to and from host memory, first in the step, as a backend runs them."""
        numbers = [t.transfer for t in plan.transfers]
        assert numbers == sorted(numbers)
        for transfer in plan.transfers:
            if not self.prefix_cache:
                raise AssertionError("a transfer without the prefix cache")
            match transfer:
                case SaveKV(entry=entry, slot=slot, length=length):
                    assert entry not in self.host and entry not in self.freed
                    assert MIN_SAVED_TOKENS <= length <= len(self.kv[slot])
                    # Only KV that was written well is ever saved.
                    assert None not in self.kv[slot][:length]
                    self.host[entry] = self.kv[slot][:length]
                    note_event("a conversation saved to host memory")
                case RestoreKV(entry=entry, slot=slot, length=length):
                    assert entry not in self.freed, "an entry freed twice"
                    self.freed.add(entry)
                    saved = self.host.pop(entry)  # never one that was not saved
                    column = self.kv[slot]
                    column.extend([None] * (length - len(column)))
                    column[:length] = saved[:length]
                    note_event("a conversation restored from host memory")
                case DropKV(entry=entry):
                    assert entry not in self.freed, "an entry freed twice"
                    self.freed.add(entry)
                    assert entry in self.host or entry in self.unsaved
                    self.host.pop(entry, None)
            held = sum(len(ids) for ids in self.host.values())
            assert held * BYTES_PER_TOKEN <= self.budget

    def write_kv(self, plan: StepPlan, broken: set[int]) -> None:
        """What a model's KV holds after running ``plan``: the fed ids at their positions,
        garbage where a row failed."""
        writes = [(c.request_id, c.slot, c.start, list(c.token_ids)) for c in plan.prefill]
        writes += [(d.request_id, d.slot, d.position, [d.token_id]) for d in plan.decode]
        for request_id, slot, start, ids in writes:
            column = self.kv[slot]
            column.extend([None] * (start + len(ids) - len(column)))
            values: list[int | None] = [None] * len(ids) if request_id in broken else list(ids)
            column[start : start + len(ids)] = values

    # ------------------------------------------------------------------ invariants

    @invariant()
    def bounded(self) -> None:
        stats = self.engine.statistics()
        assert stats.running == len(self.running) <= self.config.num_of_concurrent_executions
        assert stats.waiting == len(self.waiting) <= self.config.max_queue_size
        assert list(self.engine.waiting) == self.waiting
        # Every request ever submitted is exactly one of: running, waiting, terminated.
        assert len(self.running) + len(self.waiting) + len(self.terminal) == self.next_id
        assert stats.admitted_total >= stats.running

    @invariant()
    def host_memory(self) -> None:
        stats = self.engine.statistics().prefix
        if stats is None:
            return
        assert stats.stored_bytes == stats.stored_tokens * BYTES_PER_TOKEN <= self.budget

    @invariant()
    def progress(self) -> None:
        # Work never stalls: if something runs, a step is in flight.
        if self.running and not self.lost:
            assert self.plan is not None


EngineMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
TestEngineMachine = EngineMachine.TestCase
