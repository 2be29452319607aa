"""Unit tests of the engine: the paths a stateful run reaches rarely, and exact plans."""

from __future__ import annotations

import pytest

from chatstream.core import (
    Admission,
    Admitted,
    Cancel,
    ChatStreamConfig,
    DecodingOptions,
    Drain,
    Engine,
    Finished,
    FinishReason,
    GenerationParams,
    LocalProtocolError,
    ModelLost,
    Queued,
    QueuePositionChanged,
    Rejected,
    RejectReason,
    Release,
    RemoteProtocolError,
    StepCompleted,
    StepFailed,
    StepPlan,
    Submit,
    TextDelta,
    TokenLogprob,
    Usage,
)

from .helpers import LetterTokenizer, answer, drain, plans


def make_engine(**options: object) -> Engine:
    config = ChatStreamConfig(**{"max_new_tokens": 4, "context_len": 64, **options})  # type: ignore[arg-type]
    return Engine(config, LetterTokenizer())


def submit(engine: Engine, request_id: int, prompt_len: int = 3, **params: object) -> None:
    engine.send(
        Submit(
            request_id=request_id,
            prompt_token_ids=tuple(range(2, 2 + prompt_len)),
            params=GenerationParams(**{"max_new_tokens": 4, **params}),  # type: ignore[arg-type]
            decoding=DecodingOptions(stop_token_ids=frozenset({LetterTokenizer.STOP})),
        )
    )


def only_plan(engine: Engine) -> StepPlan:
    (plan,) = plans(drain(engine))
    return plan


def test_one_request_end_to_end() -> None:
    engine = make_engine()
    submit(engine, 1)
    events = drain(engine)
    assert events[0] == Admitted(request_id=1, slot=0)
    plan = events[1]
    assert isinstance(plan, StepPlan)
    assert plan.step == 0
    assert [(c.token_ids, c.start, c.last) for c in plan.prefill] == [((2, 3, 4), 0, True)]
    assert plan.decode == ()
    texts = []
    for step in range(4):
        engine.send(answer(plan, token=7 + step))
        events = drain(engine)
        texts += [e.text for e in events if isinstance(e, TextDelta)]
        if step < 3:
            plan = events[-1]
            assert isinstance(plan, StepPlan)
            (item,) = plan.decode
            assert (item.token_id, item.position) == (7 + step, 3 + step)
    assert "".join(texts) == "hijk"
    finished, release_plan = events[-2:]
    assert isinstance(finished, Finished)
    assert finished.reason is FinishReason.LENGTH
    assert finished.usage.completion_tokens == 4
    assert finished.usage.total_tokens == 7
    # The finished request's memory is released at once, by a release-only step.
    assert isinstance(release_plan, StepPlan)
    assert release_plan.release == (Release(request_id=1, slot=0),)
    assert release_plan.num_tokens == 0
    engine.send(StepCompleted(step=release_plan.step))
    assert drain(engine) == []
    stats = engine.statistics()
    assert (stats.running, stats.waiting, stats.finished_total) == (0, 0, 1)
    assert stats.generated_tokens_total == 4
    assert stats.steps_total == 5
    assert not stats.step_in_flight


def test_queue_full_rejects_after_n_running_and_m_waiting() -> None:
    engine = make_engine(num_of_concurrent_executions=2, max_queue_size=1)
    for request_id in range(4):
        submit(engine, request_id)
    events = drain(engine)
    assert events[:4] == [
        Admitted(request_id=0, slot=0),
        Admitted(request_id=1, slot=1),
        Queued(request_id=2, position=1),
        Rejected(request_id=3, reason=RejectReason.QUEUE_FULL),
    ]
    assert engine.statistics().rejected_total == 1


def test_zero_queue_size_means_no_waiting_room() -> None:
    engine = make_engine(num_of_concurrent_executions=1, max_queue_size=0)
    submit(engine, 0)
    submit(engine, 1)
    assert Rejected(request_id=1, reason=RejectReason.QUEUE_FULL) in drain(engine)


def test_cancel_running_admits_head_and_moves_queue_up() -> None:
    engine = make_engine(num_of_concurrent_executions=1, max_queue_size=3)
    for request_id in range(4):
        submit(engine, request_id)
    drain(engine)
    assert engine.waiting == (1, 2, 3)
    engine.send(Cancel(request_id=2))  # from the middle of the line
    assert drain(engine) == [
        Finished(
            request_id=2,
            reason=FinishReason.CANCELLED,
            usage=Usage(prompt_tokens=3, completion_tokens=0),
        ),
        QueuePositionChanged(request_id=3, position=2),
    ]
    engine.send(Cancel(request_id=0))  # the running one: its slot goes to the head at once
    events = drain(engine)
    assert [type(e) for e in events] == [Finished, Admitted, QueuePositionChanged]
    assert events[1] == Admitted(request_id=1, slot=0)
    assert events[2] == QueuePositionChanged(request_id=3, position=1)
    stats = engine.statistics()
    assert (stats.running, stats.waiting, stats.cancelled_total) == (1, 1, 2)


def test_cancel_during_step_ignores_its_result_and_releases_slot() -> None:
    engine = make_engine(num_of_concurrent_executions=1, max_queue_size=1)
    submit(engine, 0)
    submit(engine, 1)
    plan = only_plan(engine)
    engine.send(Cancel(request_id=0))
    events = drain(engine)
    assert isinstance(events[0], Finished)
    assert events[1] == Admitted(request_id=1, slot=0)
    assert not plans(events), "no second step while one is in flight"
    engine.send(answer(plan))  # the result for the cancelled request is dropped
    next_plan = only_plan(engine)
    assert next_plan.release == (Release(request_id=0, slot=0),)
    assert [c.request_id for c in next_plan.prefill] == [1]
    assert engine.is_active(1) and not engine.is_active(0)


def test_cancel_with_an_error_ends_the_request_with_it_and_is_no_model_failure() -> None:
    engine = make_engine(num_of_concurrent_executions=1, max_queue_size=1)
    submit(engine, 0)
    submit(engine, 1)
    plan = only_plan(engine)
    engine.send(answer(plan))
    drain(engine)
    for request_id in (0, 1):  # the running one and the waiting one
        engine.send(Cancel(request_id=request_id, error="shutdown"))
    finished = [e for e in drain(engine) if isinstance(e, Finished)]
    assert [(e.request_id, e.reason, e.error) for e in finished] == [
        (0, FinishReason.ERROR, "shutdown"),
        (1, FinishReason.ERROR, "shutdown"),
    ]
    assert finished[0].usage.completion_tokens == 1
    stats = engine.statistics()
    assert stats.failed_total == 0 and stats.consecutive_failures == 0
    assert stats.running == 0 and stats.waiting == 0


def test_cancel_unknown_request_is_ignored() -> None:
    engine = make_engine()
    engine.send(Cancel(request_id=42))
    assert drain(engine) == []


def test_long_prompt_is_prefilled_in_chunks_while_others_decode() -> None:
    engine = make_engine(num_of_concurrent_executions=2, max_tokens_per_step=5)
    submit(engine, 0, prompt_len=2)
    first = only_plan(engine)
    engine.send(answer(first))
    submit(engine, 1, prompt_len=9)
    plan = only_plan(engine)
    assert [d.request_id for d in plan.decode] == [0]
    assert [(c.start, len(c.token_ids), c.last) for c in plan.prefill] == [(0, 4, False)]
    engine.send(answer(plan))
    plan = only_plan(engine)
    assert [(c.start, len(c.token_ids), c.last) for c in plan.prefill] == [(4, 4, False)]
    engine.send(answer(plan))
    plan = only_plan(engine)
    assert [(c.start, len(c.token_ids), c.last) for c in plan.prefill] == [(8, 1, True)]
    assert plan.num_tokens == 2


def test_stop_token_and_per_request_stop_string() -> None:
    engine = make_engine()
    submit(engine, 0, stop=("h",))
    plan = only_plan(engine)
    engine.send(answer(plan, token=2))  # "c"
    plan = plans(drain(engine))[0]
    engine.send(answer(plan, token=7))  # "h": the stop string
    events = drain(engine)
    finished = next(e for e in events if isinstance(e, Finished))
    assert finished.reason is FinishReason.STOP
    assert [e.text for e in events if isinstance(e, TextDelta)] == []
    (release_plan,) = plans(events)
    engine.send(answer(release_plan))
    submit(engine, 1)
    engine.send(answer(only_plan(engine), token=LetterTokenizer.STOP))
    finished = next(e for e in drain(engine) if isinstance(e, Finished))
    assert finished.reason is FinishReason.STOP
    assert finished.usage.completion_tokens == 1


def test_context_length_ends_generation() -> None:
    engine = make_engine(context_len=6, max_new_tokens=2)
    submit(engine, 0, prompt_len=5, max_new_tokens=2)
    engine.send(answer(only_plan(engine)))
    finished = next(e for e in drain(engine) if isinstance(e, Finished))
    assert finished.reason is FinishReason.LENGTH
    assert finished.usage.completion_tokens == 1


def test_prompt_too_long_and_empty_prompt() -> None:
    engine = make_engine(context_len=6, max_new_tokens=2)
    submit(engine, 0, prompt_len=6, max_new_tokens=2)
    assert drain(engine) == [Rejected(request_id=0, reason=RejectReason.PROMPT_TOO_LONG)]
    with pytest.raises(LocalProtocolError, match="at least one token"):
        engine.send(Submit(request_id=1, prompt_token_ids=()))


def test_outputs_are_not_inputs() -> None:
    engine = make_engine()
    with pytest.raises(LocalProtocolError, match="not an engine input"):
        engine.send(Admitted(request_id=0, slot=0))  # type: ignore[arg-type]


def test_duplicate_request_id_is_local_error() -> None:
    engine = make_engine()
    submit(engine, 0)
    with pytest.raises(LocalProtocolError, match="already in use"):
        submit(engine, 0)


def test_model_error_fails_one_request_and_others_go_on() -> None:
    engine = make_engine(num_of_concurrent_executions=2)
    submit(engine, 0)
    submit(engine, 1)
    plan = only_plan(engine)
    engine.send(StepCompleted(step=plan.step, tokens={1: (9,)}, errors={0: "NaN logits"}))
    events = drain(engine)
    failed = next(e for e in events if isinstance(e, Finished))
    assert (failed.request_id, failed.reason, failed.error) == (0, FinishReason.ERROR, "NaN logits")
    assert TextDelta(request_id=1, text="j") in events
    assert engine.is_active(1)


def test_failures_are_counted_and_a_success_ends_a_run_of_them() -> None:
    engine = make_engine(num_of_concurrent_executions=2, max_queue_size=2)
    for request_id in range(3):
        submit(engine, request_id, max_new_tokens=1)
    plan = only_plan(engine)
    engine.send(StepCompleted(step=plan.step, errors={0: "NaN logits", 1: "NaN logits"}))
    # A cancelled request is not a success.
    submit(engine, 3, max_new_tokens=1)
    engine.send(Cancel(request_id=3))
    (plan,) = plans(drain(engine))  # request 2's prefill
    stats = engine.statistics()
    assert (stats.failed_total, stats.consecutive_failures) == (2, 2)
    engine.send(answer(plan))
    drain(engine)
    stats = engine.statistics()
    assert (stats.failed_total, stats.consecutive_failures) == (2, 0)


def test_missing_token_fails_that_request() -> None:
    engine = make_engine()
    submit(engine, 0)
    plan = only_plan(engine)
    engine.send(StepCompleted(step=plan.step))
    finished = next(e for e in drain(engine) if isinstance(e, Finished))
    assert finished.error == "the model returned no token"


def test_step_failure_fails_every_request_in_it() -> None:
    engine = make_engine(num_of_concurrent_executions=3, max_queue_size=1)
    for request_id in range(4):
        submit(engine, request_id)
    plan = only_plan(engine)
    engine.send(StepFailed(step=plan.step, message="CUDA out of memory"))
    events = drain(engine)
    failed = [e for e in events if isinstance(e, Finished)]
    assert [e.request_id for e in failed] == [0, 1, 2]
    assert all(e.error == "CUDA out of memory" for e in failed)
    assert Admitted(request_id=3, slot=0) in events


def test_results_that_do_not_match_the_step_are_remote_errors() -> None:
    engine = make_engine()
    with pytest.raises(RemoteProtocolError, match="not in flight"):
        engine.send(StepCompleted(step=0))
    submit(engine, 0)
    plan = only_plan(engine)
    with pytest.raises(RemoteProtocolError, match="not in flight"):
        engine.send(StepCompleted(step=plan.step + 1))
    with pytest.raises(RemoteProtocolError, match="had no request 7"):
        engine.send(StepCompleted(step=plan.step, tokens={7: (1,)}))


def test_drain_rejects_new_requests_and_lets_accepted_ones_finish() -> None:
    engine = make_engine(num_of_concurrent_executions=1, max_queue_size=1)
    submit(engine, 0)
    submit(engine, 1)
    plan = only_plan(engine)
    engine.send(Drain())
    submit(engine, 2)
    assert Rejected(request_id=2, reason=RejectReason.DRAINING) in drain(engine)
    assert engine.statistics().draining
    engine.send(answer(plan))
    assert engine.is_active(0) and engine.is_active(1)


def test_model_lost_fails_everything_and_refuses_new_requests() -> None:
    engine = make_engine(num_of_concurrent_executions=1, max_queue_size=2)
    for request_id in range(3):
        submit(engine, request_id)
    drain(engine)
    engine.send(ModelLost(message="model thread died"))
    events = drain(engine)
    assert sorted(e.request_id for e in events if isinstance(e, Finished)) == [0, 1, 2]
    assert all(e.reason is FinishReason.ERROR for e in events if isinstance(e, Finished))
    submit(engine, 3)
    assert drain(engine) == [Rejected(request_id=3, reason=RejectReason.UNAVAILABLE)]
    stats = engine.statistics()
    assert stats.lost == "model thread died"
    assert (stats.running, stats.waiting) == (0, 0)


def test_pool_slot_groups_fill_the_least_loaded_copy_first() -> None:
    admission = Admission(capacity=5, max_waiting=0, groups=2)
    assert admission.group_bounds == (0, 2, 5)
    slots = [admission.submit(r) for r in range(5)]
    assert [s.slot for s in slots] == [2, 0, 3, 1, 4]  # type: ignore[union-attr]
    admission.finish(0)  # slot 2 frees: group 1 now has one free slot, group 0 none
    assert admission.submit(9) == Admitted(request_id=9, slot=2)


def test_admission_takes_the_slot_its_chooser_picks() -> None:
    admission = Admission(
        capacity=4, max_waiting=0, groups=2, choose_slot=lambda request_id, free: free[0][-1]
    )
    assert admission.submit(1) == Admitted(request_id=1, slot=1)
    assert admission.submit(2) == Admitted(request_id=2, slot=0)
    admission.finish(1)
    assert admission.submit(3) == Admitted(request_id=3, slot=1)
    picky = Admission(capacity=2, max_waiting=0, choose_slot=lambda request_id, free: 1)
    picky.submit(1)
    with pytest.raises(LocalProtocolError, match="slot 1 is not free"):
        picky.submit(2)


def test_admission_refuses_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        Admission(capacity=0, max_waiting=0)
    with pytest.raises(LocalProtocolError):
        Admission(capacity=2, max_waiting=0, groups=3)
    admission = Admission(capacity=1, max_waiting=1)
    admission.submit(1)
    with pytest.raises(LocalProtocolError, match="already in use"):
        admission.submit(1)
    with pytest.raises(LocalProtocolError, match="not running"):
        admission.finish(2)
    assert admission.cancel(99) == []
    assert admission.finish(1) == []


def test_ignore_eos_generates_up_to_max_new_tokens() -> None:
    engine = make_engine()
    submit(engine, 0, ignore_eos=True)
    plan = only_plan(engine)
    for _ in range(4):
        engine.send(answer(plan, token=LetterTokenizer.STOP))
        events = drain(engine)
        next_plans = plans(events)
        plan = next_plans[0] if next_plans else plan
    finished = next(e for e in events if isinstance(e, Finished))
    assert finished.reason is FinishReason.LENGTH
    assert finished.usage.completion_tokens == 4


def test_stop_token_ids_end_the_reply_even_with_ignore_eos() -> None:
    engine = make_engine()
    submit(engine, 0, ignore_eos=True, stop_token_ids=(9,))
    plan = only_plan(engine)
    engine.send(answer(plan, token=LetterTokenizer.STOP))
    plan = plans(drain(engine))[0]
    engine.send(answer(plan, token=9))
    events = drain(engine)
    finished = next(e for e in events if isinstance(e, Finished))
    assert finished.reason is FinishReason.STOP
    assert finished.usage.completion_tokens == 2
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == ""


def test_logprobs_travel_with_the_text_they_produced() -> None:
    engine = make_engine()
    submit(engine, 0, stop=("gh",), logprobs=1, max_new_tokens=8)
    plan = only_plan(engine)
    deltas: list[TextDelta] = []
    # f, g (held back: it may start "gh"), x (releases "gx"), g, h (the stop string).
    for token in (5, 6, 23, 6, 7):
        logprob = TokenLogprob(token, -0.5, ((token, -0.5),))
        engine.send(StepCompleted(step=plan.step, tokens={0: (token,)}, logprobs={0: (logprob,)}))
        events = drain(engine)
        deltas += [e for e in events if isinstance(e, TextDelta)]
        next_plans = plans(events)
        plan = next_plans[0] if next_plans else plan
    assert [d.text for d in deltas] == ["f", "gx"]
    assert [[lp.token_id for lp in d.logprobs] for d in deltas] == [[5], [6, 23]]


def test_a_stop_tokens_logprob_is_not_reported() -> None:
    engine = make_engine()
    submit(engine, 0, logprobs=0)
    plan = only_plan(engine)
    engine.send(
        StepCompleted(
            step=plan.step,
            tokens={0: (5,)},
            logprobs={0: (TokenLogprob(5, -0.1),)},
        )
    )
    plan = plans(drain(engine))[0]
    engine.send(
        StepCompleted(
            step=plan.step,
            tokens={0: (LetterTokenizer.STOP,)},
            logprobs={0: (TokenLogprob(LetterTokenizer.STOP, -0.2),)},
        )
    )
    deltas = [e for e in drain(engine) if isinstance(e, TextDelta)]
    assert deltas == []


def test_kv_statistics_count_the_positions_running_requests_hold() -> None:
    engine = make_engine(num_of_concurrent_executions=2, max_queue_size=1)
    stats = engine.statistics()
    assert (stats.kv_tokens_used, stats.kv_tokens_capacity) == (0, 2 * 64)
    submit(engine, 1, prompt_len=3)
    submit(engine, 2, prompt_len=1)
    submit(engine, 3, prompt_len=2)
    (plan,) = plans(drain(engine))
    # Two run (3 + 1 positions); the third waits and holds none.
    assert engine.statistics().kv_tokens_used == 4
    engine.send(answer(plan))
    drain(engine)
    assert engine.statistics().kv_tokens_used == 4 + 2  # a token each
    engine.send(Cancel(request_id=1))
    drain(engine)
    assert engine.statistics().kv_tokens_used == 2 + 2  # request 2, and 3 admitted
