"""The prefix directory: the slot choice rules, its protocol errors, and conversations run
through the engine against a model whose KV the test keeps, so that every reuse is checked
against what the slot really holds."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatstream.core import (
    MIN_SAVED_TOKENS,
    Cancel,
    ChatStreamConfig,
    DecodeItem,
    DecodingOptions,
    DropKV,
    Engine,
    Finished,
    FinishReason,
    GenerationParams,
    LocalProtocolError,
    ModelLost,
    PrefillChunk,
    PrefixDirectory,
    RestoreKV,
    SaveKV,
    SlotChoice,
    StepCompleted,
    StepFailed,
    StepPlan,
    Submit,
    common_prefix_length,
)

from .helpers import LetterTokenizer, drain

STOP = LetterTokenizer.STOP


# ---------------------------------------------------------------------- common prefix


@given(st.lists(st.integers(0, 3), max_size=40), st.lists(st.integers(0, 3), max_size=40))
def test_common_prefix_length_is_the_first_difference(a: list[int], b: list[int]) -> None:
    expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if expected is None:
        expected = min(len(a), len(b))
    assert common_prefix_length(a, b) == expected
    assert common_prefix_length(tuple(a), tuple(b)) == expected


# ---------------------------------------------------------------------- the choice rules


def directory_holding(held: dict[int, list[int]], slots: int = 4) -> PrefixDirectory:
    """A directory whose slots hold ``held`` (parked in this order: the first is the LRU)."""
    directory = PrefixDirectory((0, slots))
    for request_id, (slot, tokens) in enumerate(held.items()):
        directory.claim(slot, request_id, len(tokens) + 1, 0)
        directory.extend(slot, request_id, 0, tokens)
        directory.park(slot, request_id)
    return directory


def test_the_next_turn_takes_the_slot_of_its_conversation() -> None:
    directory = directory_holding({0: [1, 2, 3], 1: [7, 8, 9, 10], 2: [1, 2, 9]})
    choice = directory.choose((7, 8, 9, 10, 11, 12), [[0, 1, 2, 3]])
    assert (choice.slot, choice.reused) == (1, 4)


def test_the_last_prompt_token_is_always_prefilled() -> None:
    directory = directory_holding({2: [5, 6, 7, 8, 9]})
    # All of the prompt is in the slot, but its last token's logits are needed.
    assert directory.choose((5, 6, 7, 8), [[0, 1, 2, 3]]) == SlotChoice(2, 3)
    assert directory.choose((5, 6, 7, 8, 9), [[0, 1, 2, 3]]) == SlotChoice(2, 4)
    assert directory.choose((5,), [[2, 3]]) == SlotChoice(3, 0)


def test_a_regenerate_reuses_the_prompt_and_gives_up_the_old_reply() -> None:
    directory = directory_holding({1: [*range(10, 30), 99, 98, 97]})
    choice = directory.choose(tuple(range(10, 30)), [[0, 1, 2, 3]])
    assert (choice.slot, choice.reused) == (1, 19)


def test_a_shared_system_prompt_does_not_destroy_a_conversation_while_a_slot_is_empty() -> None:
    system = [1, 2, 3]
    directory = directory_holding({0: [*system, *range(10, 40)]})
    choice = directory.choose((*system, 50, 51), [[0, 1, 2, 3]])
    assert (choice.slot, choice.reused) == (1, 0)  # an empty slot, not the conversation


def test_without_empty_slots_the_least_recently_used_conversation_is_given_up() -> None:
    system = [1, 2, 3]
    directory = directory_holding(
        {2: [*system, *range(10, 40)], 0: [*system, *range(50, 90)], 1: [*system, 7, 8, 9, 10]},
        slots=3,
    )
    choice = directory.choose((*system, 60, 61), [[0, 1, 2]])
    # Slot 2 was parked first; it still reuses the system prompt it shares.
    assert (choice.slot, choice.reused) == (2, 3)


def test_the_fallback_goes_to_the_least_loaded_group() -> None:
    directory = PrefixDirectory((0, 2, 4))
    assert directory.choose((1, 2), [[1], [2, 3]]).slot == 2


def test_reuse_beats_the_group_balance() -> None:
    directory = PrefixDirectory((0, 2, 4))
    directory.claim(1, 7, 5, 0)
    directory.extend(1, 7, 0, [4, 4, 4])
    directory.park(1, 7)
    assert directory.choose((4, 4, 4, 5), [[1], [2, 3]]).slot == 1


def test_statistics_count_queries_hits_and_parked_tokens() -> None:
    directory = directory_holding({0: [1, 2, 3, 4]})
    assert directory.statistics().parked_tokens == 4
    choice = directory.choose((1, 2, 3, 4, 5), [[0, 1]])
    directory.claim(choice.slot, 9, 5, choice.reused)
    stats = directory.statistics()
    assert (stats.queried_tokens, stats.hit_tokens, stats.parked_tokens) == (5 + 5, 4, 0)
    assert directory.held(0) == (1, 2, 3, 4)


def test_forget_clears_what_slots_hold() -> None:
    directory = directory_holding({0: [1, 2], 1: [3, 4]})
    directory.forget(0)
    assert directory.held(0) == () and directory.held(1) == (3, 4)
    directory.forget()
    assert directory.held(1) == ()


def test_misuse_is_a_local_protocol_error() -> None:
    directory = directory_holding({0: [1, 2, 3]})
    with pytest.raises(LocalProtocolError, match="no free slot"):
        directory.choose((1, 2), [[]])
    with pytest.raises(LocalProtocolError, match="cannot reuse"):
        directory.claim(0, 10, 3, 3)  # the last prompt token must be prefilled
    with pytest.raises(LocalProtocolError, match="cannot reuse"):
        directory.claim(1, 10, 9, 1)  # slot 1 holds nothing
    directory.claim(0, 10, 5, 2)
    with pytest.raises(LocalProtocolError, match="taken"):
        directory.claim(0, 11, 5, 0)
    with pytest.raises(LocalProtocolError, match="gap or overlap"):
        directory.extend(0, 10, 3, [9])
    directory.extend(0, 12, 2, [9])  # someone who left while the step ran: ignored
    assert directory.held(0) == (1, 2)
    with pytest.raises(LocalProtocolError, match="not held"):
        directory.park(0, 11)


# ---------------------------------------------------------------------- through the engine


class KeptModel:
    """A model whose KV the test keeps: it checks every reuse against what the slot holds
    (a failed row writes garbage) and answers from each request's script."""

    def __init__(self, engine: Engine, host_budget: int = 0) -> None:
        self.engine = engine
        self.kv: dict[int, list[int | None]] = defaultdict(list)
        #: Host entries as a backend holds them; entries freed so far.
        self.host: dict[int, list[int | None]] = {}
        self.freed: set[int] = set()
        self.host_budget = host_budget
        self.restored = 0
        #: Requests whose restore fails (the copy breaks half-way).
        self.lose_restore_of: set[int] = set()
        self.finished: dict[int, Finished] = {}
        self.first_start: dict[int, int] = {}
        self.sampled: dict[int, list[int]] = defaultdict(list)

    def settle(
        self,
        scripts: dict[int, list[int]],
        fail: Callable[[int], bool] = lambda request_id: False,
    ) -> None:
        """Run steps until nothing is left to do."""
        while True:
            plans = []
            for event in drain(self.engine):
                if isinstance(event, Finished):
                    self.finished[event.request_id] = event
                elif isinstance(event, StepPlan):
                    plans.append(event)
            if not plans:
                return
            (plan,) = plans
            self.run(plan, scripts, fail)

    def run(
        self, plan: StepPlan, scripts: dict[int, list[int]], fail: Callable[[int], bool]
    ) -> None:
        items: list[PrefillChunk | DecodeItem] = [*plan.prefill, *plan.decode]
        lost = self.transfer(plan)
        broken = {i.request_id for i in items if fail(i.request_id)} | lost
        for chunk in plan.prefill:
            if chunk.request_id in lost:
                continue  # a backend skips the prompt of a request whose restore failed
            if chunk.first:
                self.first_start[chunk.request_id] = chunk.start
                assert self.kv[chunk.slot][: chunk.start] == list(chunk.reused_ids)
            self.write(chunk.slot, chunk.start, list(chunk.token_ids), chunk.request_id in broken)
        for item in plan.decode:
            self.write(item.slot, item.position, [item.token_id], item.request_id in broken)
        tokens: dict[int, tuple[int, ...]] = {}
        sampling = [c.request_id for c in plan.prefill if c.last]
        for request_id in [*sampling, *(d.request_id for d in plan.decode)]:
            if request_id not in broken:
                token = scripts[request_id].pop(0)
                tokens[request_id] = (token,)
                self.sampled[request_id].append(token)
        for request_id in broken:
            tokens.pop(request_id, None)
        errors = dict.fromkeys(broken, "broken row")
        self.engine.send(StepCompleted(step=plan.step, tokens=tokens, errors=errors))

    def transfer(self, plan: StepPlan) -> set[int]:
        """Run the plan's copies; the requests whose restore failed."""
        lost = set()
        for transfer in plan.transfers:
            match transfer:
                case SaveKV(entry=entry, slot=slot, length=length):
                    assert entry not in self.host and entry not in self.freed
                    assert None not in self.kv[slot][:length]  # only KV written well
                    self.host[entry] = self.kv[slot][:length]
                case RestoreKV(entry=entry, slot=slot, length=length, request_id=request_id):
                    assert entry not in self.freed, "freed twice"
                    self.freed.add(entry)
                    saved = self.host.pop(entry)[:length]
                    self.restored += length  # the engine counts what it decided
                    if request_id in self.lose_restore_of:
                        saved = [None] * length
                        lost.add(request_id)
                    column = self.kv[slot]
                    column.extend([None] * (length - len(column)))
                    column[:length] = saved
                case DropKV(entry=entry):
                    assert entry not in self.freed, "freed twice"
                    self.freed.add(entry)
                    self.host.pop(entry, None)  # unknown if its save never ran
            held = sum(len(ids) for ids in self.host.values())
            assert held * BYTES_PER_TOKEN <= self.host_budget
        return lost

    def write(self, slot: int, start: int, ids: list[int], broken: bool) -> None:
        column = self.kv[slot]
        column.extend([None] * (start + len(ids) - len(column)))
        column[start : start + len(ids)] = [None] * len(ids) if broken else ids


#: With this, each MiB of host budget holds MIN_SAVED_TOKENS tokens.
BYTES_PER_TOKEN = 2**20 // MIN_SAVED_TOKENS


def engine(
    capacity: int = 4, groups: int = 1, *, prefix_cache: bool = True, host_mib: int = 0
) -> Engine:
    config = ChatStreamConfig(
        num_of_concurrent_executions=capacity,
        max_queue_size=16,
        max_new_tokens=8,
        context_len=400,
        max_tokens_per_step=capacity + 7,
        prefix_cache=prefix_cache,
        prefix_cache_mb=host_mib,
    )
    return Engine(config, LetterTokenizer(), slot_groups=groups, kv_bytes_per_token=BYTES_PER_TOKEN)


def submit(e: Engine, request_id: int, prompt: tuple[int, ...], max_new: int = 8) -> None:
    e.send(
        Submit(
            request_id=request_id,
            prompt_token_ids=prompt,
            params=GenerationParams(max_new_tokens=max_new),
            decoding=DecodingOptions(stop_token_ids=frozenset({STOP})),
        )
    )


SYSTEM = (1, 2, 3)


@settings(max_examples=60, deadline=None)
@given(users=st.integers(1, 4), turns=st.integers(2, 5), groups=st.integers(1, 2), data=st.data())
def test_each_turn_prefills_only_what_is_new_while_conversations_fit_the_slots(
    users: int, turns: int, groups: int, data: st.DataObject
) -> None:
    e = engine(capacity=4, groups=groups)
    model = KeptModel(e)
    history: dict[int, tuple[int, ...]] = dict.fromkeys(range(users), SYSTEM)
    for turn in range(turns):
        scripts: dict[int, list[int]] = {}
        for user in range(users):
            # Each user's own words, so that conversations part after the system prompt.
            words = st.lists(st.integers(10 + 20 * user, 29 + 20 * user), min_size=1, max_size=6)
            prompt = (*history[user], *data.draw(words))
            reply = data.draw(words)
            by_stop = data.draw(st.booleans(), label="ends by a stop token")
            scripts[user * 100 + turn] = [*reply, STOP] if by_stop else [*reply, 4]
            submit(e, user * 100 + turn, prompt, max_new=len(reply) + 1)
            history[user] = prompt
        model.settle(scripts)
        for user in range(users):
            request_id = user * 100 + turn
            usage = model.finished[request_id].usage
            if turn:
                # The previous prompt and reply, less the reply's last token (sampled, never
                # fed): all of it is in the slot, nothing else is prefilled again.
                previous = model.finished[user * 100 + turn - 1].usage
                assert usage.cached_tokens == previous.total_tokens - 1
            assert model.first_start[request_id] == usage.cached_tokens
            # The next turn renders the whole reply, its end marker included.
            history[user] = (*history[user], *model.sampled[request_id])
    stats = e.statistics().prefix
    assert stats is not None and stats.hit_tokens > 0


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(1, 3),
    groups=st.integers(1, 3),
    data=st.data(),
)
def test_a_reuse_is_always_what_the_slot_holds_under_contention_and_failures(
    capacity: int, groups: int, data: st.DataObject
) -> None:
    groups = min(groups, capacity)
    e = engine(capacity=capacity, groups=groups)
    model = KeptModel(e)
    history: dict[int, tuple[int, ...]] = {}
    for round_ in range(data.draw(st.integers(1, 6), label="rounds")):
        scripts = submit_round(
            e, data, history, round_, users=5, new_words=lambda user: st.integers(4, 9)
        )
        doomed = set(data.draw(st.lists(st.sampled_from(sorted(scripts)), max_size=2)))
        cancel: bool = data.draw(st.booleans(), label="cancel instead of failing")
        if doomed and cancel:
            for request_id in doomed:
                e.send(Cancel(request_id=request_id))
            doomed = set()
        model.settle(scripts, fail=doomed.__contains__)
        check_round(model, scripts, doomed, history)


def submit_round(
    e: Engine,
    data: st.DataObject,
    history: dict[int, tuple[int, ...]],
    round_: int,
    *,
    users: int,
    new_words: Callable[[int], st.SearchStrategy[int]],
    max_words: int = 5,
    keep: int = 400,
) -> dict[int, list[int]]:
    """Some users send their next turn (some after a regenerate or an edit, cutting their
    history short; the oldest turns dropped past ``keep`` tokens): each request's script."""
    scripts: dict[int, list[int]] = {}
    for user in data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=users, unique=True)):
        base = history.get(user, SYSTEM)
        if data.draw(st.booleans(), label="regenerate or edit"):
            base = base[: data.draw(st.integers(0, len(base)))]
        turn = data.draw(st.lists(new_words(user), min_size=1, max_size=max_words))
        prompt = (*base, *turn)[-keep:]
        request_id = user * 100 + round_
        scripts[request_id] = data.draw(st.lists(st.integers(4, 9), min_size=6, max_size=6))
        submit(e, request_id, prompt, max_new=data.draw(st.integers(1, 5)))
        history[user] = prompt
    return scripts


def check_round(
    model: KeptModel,
    scripts: dict[int, list[int]],
    doomed: set[int],
    history: dict[int, tuple[int, ...]],
) -> None:
    """Every request reports the reuse it was planned with; the replies join the history."""
    for request_id in scripts:
        usage = model.finished[request_id].usage
        assert usage.cached_tokens == model.first_start.get(request_id, usage.cached_tokens)
        if request_id not in doomed:
            user = request_id // 100
            history[user] = (*history[user], *model.sampled[request_id])


def test_no_prefix_cache_prefills_everything() -> None:
    e = engine(prefix_cache=False)
    model = KeptModel(e)
    submit(e, 1, (1, 2, 3, 4))
    model.settle({1: [5, STOP]})
    submit(e, 2, (1, 2, 3, 4, 5, STOP, 6))
    model.settle({2: [7, STOP]})
    assert model.first_start == {1: 0, 2: 0}
    assert e.statistics().prefix is None


def test_a_lost_model_forgets_every_prefix() -> None:
    e = engine()
    model = KeptModel(e)
    submit(e, 1, (1, 2, 3, 4))
    model.settle({1: [5, STOP]})
    before = e.statistics().prefix
    assert before is not None and before.parked_tokens == 5  # the prompt and 5, not the stop
    e.send(ModelLost(message="gone"))
    drain(e)
    stats = e.statistics().prefix
    assert stats is not None and stats.parked_tokens == 0


# ---------------------------------------------------------------------- host memory


def words(user: int, count: int) -> tuple[int, ...]:
    """A user's own ids, so that conversations part after the system prompt."""
    return tuple(10 + 20 * user + i % 20 for i in range(count))


def test_conversations_no_slot_holds_come_back_from_host_memory() -> None:
    # Three conversations take turns in one slot: each turn writes over the last one, which
    # goes to host memory and comes back when its conversation does.
    e = engine(capacity=1, host_mib=16)
    model = KeptModel(e, host_budget=16 * 2**20)
    history: dict[int, tuple[int, ...]] = dict.fromkeys(range(3), SYSTEM)
    for turn in range(3):
        for user in range(3):
            request_id = user * 100 + turn
            prompt = (*history[user], *words(user, 40))
            submit(e, request_id, prompt, max_new=4)
            model.settle({request_id: [4, 5, 6, STOP]})
            usage = model.finished[request_id].usage
            if turn:
                previous = model.finished[request_id - 1].usage
                assert usage.cached_tokens == previous.total_tokens - 1
            history[user] = (*prompt, *model.sampled[request_id])
    stats = e.statistics().prefix
    assert stats is not None and stats.restored_tokens == model.restored > 0
    assert stats.stored_entries == len(model.host) == 2  # the two the slot does not hold
    assert stats.stored_bytes == stats.stored_tokens * BYTES_PER_TOKEN


def test_the_host_budget_evicts_the_oldest_conversation() -> None:
    # Room for one saved conversation of about 90 tokens (3 MiB = 96 tokens).
    e = engine(capacity=1, host_mib=3)
    model = KeptModel(e, host_budget=3 * 2**20)
    prompts = {user: (*SYSTEM, *words(user, 80)) for user in range(3)}
    for user in range(3):
        submit(e, user, prompts[user], max_new=2)
        model.settle({user: [4, STOP]})
    # User 0 was saved when user 1 came, then evicted for user 1 when user 2 came.
    assert [tokens[3] for tokens in model.host.values()] == [30]
    submit(e, 11, (*prompts[1], 4, 7), max_new=2)
    model.settle({11: [4, STOP]})
    assert model.finished[11].usage.cached_tokens == len(prompts[1]) + 1  # restored
    submit(e, 10, (*prompts[0], 4, 7), max_new=2)
    model.settle({10: [4, STOP]})
    assert model.finished[10].usage.cached_tokens == len(SYSTEM)  # evicted: the system prompt


def test_a_short_conversation_is_not_worth_a_copy() -> None:
    e = engine(capacity=1, host_mib=8)
    model = KeptModel(e, host_budget=8 * 2**20)
    for user in range(2):
        submit(e, user, words(user, MIN_SAVED_TOKENS - 5), max_new=2)
        model.settle({user: [4, STOP]})
    assert model.host == {} and model.freed == set()


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(1, 3),
    groups=st.integers(1, 2),
    host_mib=st.integers(0, 6),
    data=st.data(),
)
def test_host_memory_never_exceeds_its_budget_and_frees_each_entry_once(
    capacity: int, groups: int, host_mib: int, data: st.DataObject
) -> None:
    groups = min(groups, capacity)
    e = engine(capacity=capacity, groups=groups, host_mib=host_mib)
    model = KeptModel(e, host_budget=host_mib * 2**20)
    history: dict[int, tuple[int, ...]] = {}
    for round_ in range(data.draw(st.integers(1, 6), label="rounds")):
        # Long turns of each user's own ids, so that conversations are worth saving.
        scripts = submit_round(
            e,
            data,
            history,
            round_,
            users=4,
            new_words=lambda user: st.integers(10 + 20 * user, 29 + 20 * user),
            max_words=50,
            keep=300,
        )
        doomed = set(data.draw(st.lists(st.sampled_from(sorted(scripts)), max_size=1)))
        if data.draw(st.booleans(), label="a restore fails"):
            model.lose_restore_of = set(doomed)
        model.settle(scripts, fail=doomed.__contains__)
        check_round(model, scripts, doomed, history)
    stats = e.statistics().prefix
    assert stats is not None
    assert stats.stored_bytes <= host_mib * 2**20
    assert stats.stored_entries == len(model.host)  # every step ran: the two agree
    assert stats.restored_tokens == model.restored


def parked(directory: PrefixDirectory, slot: int, request_id: int, tokens: list[int]) -> None:
    directory.claim(slot, request_id, len(tokens) + 1, 0)
    directory.extend(slot, request_id, 0, tokens)
    directory.park(slot, request_id)


def test_an_entry_that_holds_a_conversation_and_more_is_the_only_one_kept() -> None:
    conversation = list(range(100, 140))
    longer = [*conversation, 7, 8, 9]
    directory = PrefixDirectory((0, 2), kv_bytes_per_token=1, host_budget_bytes=1000)
    assert directory.host_budget_bytes == 1000
    parked(directory, 0, 1, conversation)
    parked(directory, 1, 2, longer)
    # Overwriting slot 1 saves the longer one; slot 0 then holds nothing it does not cover.
    directory.claim(1, 3, 5, 0)
    directory.claim(0, 4, 5, 0)
    assert directory.stored() == {0: tuple(longer)}
    assert [type(t) for t in directory.take_transfers()] == [SaveKV]
    # The other way round, the shorter entry is dropped for the longer one.
    directory = PrefixDirectory((0, 2), kv_bytes_per_token=1, host_budget_bytes=1000)
    parked(directory, 0, 1, conversation)
    parked(directory, 1, 2, longer)
    directory.claim(0, 3, 5, 0)
    directory.claim(1, 4, 5, 0)
    assert directory.stored() == {1: tuple(longer)}
    transfers = directory.take_transfers()
    assert [type(t) for t in transfers] == [SaveKV, DropKV, SaveKV]
    assert [t.transfer for t in transfers] == [0, 1, 2]
    with pytest.raises(LocalProtocolError, match="no host entry"):
        PrefixDirectory((0, 1)).claim(0, 5, 50, 10, restore=7)


def _alternate(e: Engine, model: KeptModel) -> None:
    """Two long conversations through one slot: the second saves the first to host memory."""
    for request_id in (1, 2):
        submit(e, request_id, words(request_id, 40), max_new=2)
        model.settle({request_id: [4, STOP]})


def test_a_failed_step_fails_its_restore_and_drops_what_it_saved() -> None:
    e = engine(capacity=1, host_mib=16)
    model = KeptModel(e, host_budget=16 * 2**20)
    _alternate(e, model)
    submit(e, 3, (*words(1, 40), 4, 9), max_new=2)  # conversation 1 comes back
    (plan,) = [p for p in drain(e) if isinstance(p, StepPlan)]
    assert [type(t) for t in plan.transfers] == [SaveKV, RestoreKV]
    e.send(StepFailed(step=plan.step, message="out of memory"))
    model.settle({})  # the next step releases its slot
    assert model.finished[3].error == "out of memory"
    stats = e.statistics().prefix
    assert stats is not None and stats.stored_entries == 0  # its save may not have run
    # Nothing is reused of the slot the failed restore wrote into.
    submit(e, 4, (*words(1, 40), 4, 9), max_new=2)
    model.settle({4: [4, STOP]})
    assert model.finished[4].usage.cached_tokens == 0


def test_a_restore_that_fails_for_a_request_already_gone_forgets_the_slot() -> None:
    e = engine(capacity=1, host_mib=16)
    model = KeptModel(e, host_budget=16 * 2**20)
    _alternate(e, model)
    submit(e, 3, (*words(1, 40), 4, 9), max_new=2)
    (plan,) = [p for p in drain(e) if isinstance(p, StepPlan)]
    (restore,) = [t for t in plan.transfers if isinstance(t, RestoreKV)]
    e.send(Cancel(request_id=3))  # it leaves while its step runs
    e.send(StepCompleted(step=plan.step, errors={3: "the saved prefix is gone"}))
    model.settle({})
    assert model.finished[3].reason is FinishReason.CANCELLED
    submit(e, 4, (*words(1, 40), 4, 9), max_new=2)
    model.settle({4: [4, STOP]})
    assert model.finished[4].usage.cached_tokens == 0
    assert restore.slot == 0


def test_an_entry_of_a_copy_with_no_free_slot_is_not_restored() -> None:
    # KV never moves between model copies: an entry saved by copy 0 can only come back into
    # a slot of copy 0, so while copy 0 is full the prompt takes copy 1's slot from scratch.
    conversation = list(range(100, 140))
    directory = PrefixDirectory((0, 1, 2), kv_bytes_per_token=1, host_budget_bytes=1000)
    parked(directory, 0, 1, conversation)
    directory.claim(0, 2, 5, 0)  # writes over the conversation: saved to host memory
    assert directory.stored() == {0: tuple(conversation)}
    prompt = (*conversation, 7)
    assert directory.choose(prompt, [[], [1]]) == SlotChoice(1, 0)
    directory.park(0, 2)
    assert directory.choose(prompt, [[0], [1]]) == SlotChoice(0, len(conversation), restore=0)
