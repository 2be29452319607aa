"""Several model copies behind one queue: plans split by slot group, least-loaded admission."""

from __future__ import annotations

import pathlib
import threading
from typing import Any

import anyio
import pytest

from chatstream import ChatStream
from chatstream.adapters.model.pool import ModelPool, split_plan
from chatstream.core import (
    DecodeItem,
    DropKV,
    GenerationParams,
    PrefillChunk,
    Release,
    RestoreKV,
    SaveKV,
    StepCompleted,
    StepPlan,
)
from tests.tiny_model import load_tiny_model

from .test_model_thread import ScriptedBackend

pytestmark = pytest.mark.anyio
PARAMS = GenerationParams()


def test_split_plan_renumbers_slots_per_group() -> None:
    plan = StepPlan(
        step=4,
        release=(Release(request_id=9, slot=3),),
        prefill=(
            PrefillChunk(request_id=1, slot=0, token_ids=(1,), start=0, last=True, params=PARAMS),
        ),
        decode=(
            DecodeItem(request_id=2, slot=2, token_id=5, position=3, params=PARAMS),
            DecodeItem(request_id=3, slot=1, token_id=6, position=7, params=PARAMS),
        ),
    )
    first, second, third = split_plan(plan, (0, 2, 4, 6))
    assert first is not None and second is not None
    assert [(c.request_id, c.slot) for c in first.prefill] == [(1, 0)]
    assert [(d.request_id, d.slot) for d in first.decode] == [(3, 1)]
    assert [(d.request_id, d.slot) for d in second.decode] == [(2, 0)]
    assert second.release == (Release(request_id=9, slot=1),)
    assert third is None
    assert first.step == second.step == 4


def test_split_plan_sends_each_transfer_to_its_copy() -> None:
    plan = StepPlan(
        step=1,
        transfers=(
            SaveKV(transfer=0, entry=7, slot=3, length=40),
            DropKV(transfer=1, entry=2, group=0),
            RestoreKV(transfer=2, entry=5, slot=3, length=30, request_id=4),
        ),
    )
    first, second = split_plan(plan, (0, 2, 4))
    assert first is not None and second is not None
    assert first.transfers == (DropKV(transfer=1, entry=2, group=0),)
    assert second.transfers == (
        SaveKV(transfer=0, entry=7, slot=1, length=40),
        RestoreKV(transfer=2, entry=5, slot=1, length=30, request_id=4),
    )


async def test_conversations_stay_with_the_copy_that_holds_them(
    tiny_model: tuple[Any, Any], tiny_model_dir: pathlib.Path
) -> None:
    # Two copies of one slot each and three conversations: turns find their KV in a slot
    # or in host memory of the copy that ran them, and say what one copy without reuse says.
    model, tokenizer = tiny_model
    copy: Any = load_tiny_model(tiny_model_dir)[0]
    options: dict[str, Any] = {
        "tokenizer": tokenizer,
        "temperature": 0.0,
        "max_new_tokens": 6,
        "context_len": 256,
    }
    words = "the quick brown fox jumps over the lazy dog and runs far away"
    questions = [f"{n}: {words} {words}" for n in ("one", "two", "three")]

    async def talk(chat_stream: ChatStream) -> list[str]:
        replies = []
        async with chat_stream:
            conversations = [chat_stream.new_conversation() for _ in questions]
            for turn in range(3):
                for conversation, question in zip(conversations, questions, strict=True):
                    deltas = chat_stream.chat(conversation, f"{question} {turn}")
                    replies.append("".join([d async for d in deltas]))
            stats = chat_stream.statistics().prefix
        if stats is not None:
            restored.append(stats.restored_tokens)
            hits.append(stats.hit_tokens)
        return replies

    restored: list[int] = []
    hits: list[int] = []
    pooled = ChatStream(
        model=[model, copy], device=["cpu", "cpu"], num_of_concurrent_executions=2, **options
    )
    alone = ChatStream(model=model, prefix_cache=False, num_of_concurrent_executions=1, **options)
    assert await talk(pooled) == await talk(alone)
    (pooled_restored,), (pooled_hits,) = restored, hits
    assert pooled_restored > 0 and pooled_hits > pooled_restored


async def test_a_failing_copy_fails_only_its_own_requests() -> None:
    def failing() -> ScriptedBackend:
        return ScriptedBackend(fail_steps=[0])

    async with ModelPool([ScriptedBackend, failing], (0, 1, 2)) as pool:
        plan = StepPlan(
            step=0,
            prefill=(
                PrefillChunk(
                    request_id=1, slot=0, token_ids=(1,), start=0, last=True, params=PARAMS
                ),
                PrefillChunk(
                    request_id=2, slot=1, token_ids=(1,), start=0, last=True, params=PARAMS
                ),
            ),
        )
        result = await pool.run(plan)
    assert isinstance(result, StepCompleted)
    assert result.tokens == {1: (ord("x"),)}
    assert result.errors == {2: "the model failed on this request (MemoryError)"}


async def test_two_model_copies_serve_one_queue(
    tiny_model: tuple[Any, Any], tiny_model_dir: pathlib.Path
) -> None:
    model, tokenizer = tiny_model
    copy: Any = load_tiny_model(tiny_model_dir)[0]
    threads: dict[int, set[int]] = {id(model): set(), id(copy): set()}

    def recorder(key: int) -> Any:
        return lambda module, args: threads[key].add(threading.get_ident())

    hooks = [m.register_forward_pre_hook(recorder(id(m))) for m in (model, copy)]
    try:
        chat_stream = ChatStream(
            model=[model, copy],
            tokenizer=tokenizer,
            device=["cpu", "cpu"],
            num_of_concurrent_executions=4,
            temperature=0.0,
            max_new_tokens=8,
            context_len=256,
        )
        questions = ["hello", "the quick brown fox", "こんにちは", "stream token"]
        replies: dict[str, str] = {}
        async with chat_stream:
            assert chat_stream.driver.engine.slot_groups == (0, 2, 4)

            async def ask(question: str) -> None:
                conversation = chat_stream.new_conversation()
                replies[question] = "".join(
                    [d async for d in chat_stream.chat(conversation, question)]
                )

            async with anyio.create_task_group() as tg:
                for question in questions:
                    tg.start_soon(ask, question)
            assert chat_stream.statistics().running == 0
        for hook in hooks:
            hook.remove()
        # Each copy ran in its own thread, off the event loop, and both took work.
        assert len(threads[id(model)]) == len(threads[id(copy)]) == 1
        assert threads[id(model)].isdisjoint(threads[id(copy)])
        assert threading.get_ident() not in threads[id(model)] | threads[id(copy)]
        # The same answers as one copy alone.
        single = ChatStream(
            model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=8, context_len=256
        )
        async with single:
            for question in questions:
                conversation = single.new_conversation()
                alone = "".join([d async for d in single.chat(conversation, question)])
                assert replies[question] == alone
    finally:
        for hook in hooks:
            hook.remove()


def test_one_device_per_model_is_checked() -> None:
    from chatstream import ChatPromptTogetherRedPajamaINCITEChat as Prompt
    from chatstream.core import ConfigError

    with pytest.raises(ConfigError, match="one device per model"):
        ChatStream(
            model=[object(), object()], tokenizer=object(), device=["cpu"], chat_prompt_clazz=Prompt
        )
    with pytest.raises(ConfigError, match="at least the number of models"):
        ChatStream(
            model=[object()] * 3,
            tokenizer=object(),
            num_of_concurrent_executions=2,
            chat_prompt_clazz=Prompt,
        )


async def test_a_custom_backend_plugs_into_chat_stream() -> None:
    built: list[int] = []

    def factory(num_slots: int) -> ScriptedBackend:
        built.append(num_slots)
        return ScriptedBackend()

    chat_stream = ChatStream(
        backend=[factory, factory], num_of_concurrent_executions=3, max_new_tokens=4
    )
    async with chat_stream:
        assert chat_stream.model_id == "scripted"
        conversation = chat_stream.new_conversation()
        reply = "".join([d async for d in chat_stream.chat(conversation, "hi")])
    assert reply == "xxxx"  # the scripted model always says "x"
    assert sorted(built) == [1, 2]  # three slots split over two copies


async def test_a_copy_whose_thread_dies_takes_the_pool_down_cleanly() -> None:
    def dying(num_slots: int) -> ScriptedBackend:
        return ScriptedBackend(die_at=1)

    chat_stream = ChatStream(backend=[dying, dying], num_of_concurrent_executions=2)
    async with chat_stream:
        conversation = chat_stream.new_conversation()
        from chatstream.core import ChatStreamError

        with pytest.raises(ChatStreamError, match="the model thread died"):
            async for _ in chat_stream.chat(conversation, "hi"):
                pass
        stats = chat_stream.statistics()
        assert stats.lost is not None
        assert (stats.running, stats.waiting) == (0, 0)
        from chatstream import RequestRejected

        with pytest.raises(RequestRejected) as caught:
            await chat_stream.start_turn(chat_stream.new_conversation(), "later")
        assert caught.value.status_hint == 503
