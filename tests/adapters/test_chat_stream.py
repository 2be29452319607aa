"""ChatStream end to end on both event loops: the mock backend and a real tiny model."""

from __future__ import annotations

import logging
import random
import threading
from contextlib import aclosing
from typing import Any

import anyio
import pytest

from chatstream import ChatStream
from chatstream.adapters.model import mock_texts
from chatstream.adapters.model.mock_backend import split_pieces
from chatstream.chat_stream import RequestRejected
from chatstream.core import (
    Admitted,
    ChatStreamError,
    ConfigError,
    Conversation,
    MessageStatus,
    Queued,
    QueuePositionChanged,
    RejectReason,
    TurnInFlightError,
)

pytestmark = pytest.mark.anyio


def mock(**options: Any) -> ChatStream:
    mock_params = options.pop("mock_params", {"type": "round", "time_per_token_sec": 0.0})
    return ChatStream(use_mock_response=True, mock_params=mock_params, **options)


async def reply(chat_stream: ChatStream, conversation: Conversation, text: str) -> list[str]:
    return [delta async for delta in chat_stream.chat(conversation, text)]


async def test_mock_round_streams_one_line_per_turn_and_keeps_history() -> None:
    async with mock() as chat_stream:
        conversation = chat_stream.new_conversation()
        first = await reply(chat_stream, conversation, "tell me a story")
        second = await reply(chat_stream, conversation, "and then?")
    assert "".join(first) == mock_texts.ROUND_EN[0]
    assert "".join(second) == mock_texts.ROUND_EN[1]
    assert len(first) == len(split_pieces(mock_texts.ROUND_EN[0])) > 5  # word by word
    assert [m.role for m in conversation.messages] == ["user", "assistant"] * 2
    assert conversation.messages[1].content == mock_texts.ROUND_EN[0]
    assert conversation.messages[3].status is MessageStatus.COMPLETE
    assert conversation.messages[3].finish_reason == "stop"


async def test_mock_echo_streams_japanese_character_by_character() -> None:
    async with mock(mock_params={"type": "echo", "time_per_token_sec": 0}) as chat_stream:
        deltas = await reply(chat_stream, chat_stream.new_conversation(), "こんにちは、世界 ok")
    assert deltas == ["こ", "ん", "に", "ち", "は", "、", "世", "界", " ok"]


async def test_mock_long_and_japanese_round() -> None:
    async with mock(mock_params={"type": "long", "time_per_token_sec": 0}) as chat_stream:
        long_reply = await reply(chat_stream, chat_stream.new_conversation(), "hi")
    assert "".join(long_reply) == mock_texts.LONG_EN
    async with mock() as chat_stream:
        japanese = await reply(chat_stream, chat_stream.new_conversation(), "物語を聞かせて")
    assert "".join(japanese) == mock_texts.ROUND_JA[0]


async def test_mock_timing_knobs_are_honoured() -> None:
    params = {"type": "echo", "initial_wait_sec": 0.3, "time_per_token_sec": 0.05}
    async with mock(mock_params=params) as chat_stream:
        start = anyio.current_time()
        deltas = await reply(chat_stream, chat_stream.new_conversation(), "a b c d")
        elapsed = anyio.current_time() - start
    assert deltas == ["a", " b", " c", " d"]
    # Lower bounds only: the mock may not be faster than it was told to be.
    assert elapsed >= 0.3 + 4 * 0.05


async def test_queue_full_is_rejected_and_changes_nothing() -> None:
    slow = {"type": "long", "time_per_token_sec": 0.02}
    async with mock(
        num_of_concurrent_executions=1, max_queue_size=1, mock_params=slow
    ) as chat_stream:
        running, waiting, rejected = (chat_stream.new_conversation() for _ in range(3))
        first = await chat_stream.start_turn(running, "one")
        second = await chat_stream.start_turn(waiting, "two")
        assert isinstance(first.outcome, Admitted)
        assert second.outcome == Queued(request_id=second.outcome.request_id, position=1)
        with pytest.raises(RequestRejected) as caught:
            await chat_stream.start_turn(rejected, "three")
        assert caught.value.reason is RejectReason.QUEUE_FULL
        assert caught.value.status_hint == 429
        assert rejected.messages == []  # the refused turn left no trace
        stats = chat_stream.statistics()
        assert (stats.running, stats.waiting, stats.rejected_total) == (1, 1, 1)
        # Leaving the running turn hands its slot to the waiting one at once.
        first.close()
        events = second.events()
        assert isinstance(await anext(events), Queued)
        assert isinstance(await anext(events), Admitted)
        await events.aclose()
        stats = chat_stream.statistics()
        assert (stats.running, stats.waiting, stats.cancelled_total) == (0, 0, 2)
    assert running.messages[-1].status is MessageStatus.CANCELLED
    assert waiting.messages[-1].status is MessageStatus.CANCELLED


async def test_queue_positions_move_up_to_started() -> None:
    slow = {"type": "echo", "time_per_token_sec": 0.02}
    async with mock(
        num_of_concurrent_executions=1, max_queue_size=3, mock_params=slow
    ) as chat_stream:
        turns = [
            await chat_stream.start_turn(chat_stream.new_conversation(), "a b c") for _ in range(4)
        ]
        seen: list[Queued | QueuePositionChanged | Admitted] = []
        async for event in turns[3].events():
            if isinstance(event, Queued | QueuePositionChanged | Admitted):
                seen.append(event)
        positions = [e.position for e in seen if not isinstance(e, Admitted)]
        assert positions == [3, 2, 1]
        assert isinstance(seen[-1], Admitted)
        for turn in turns:
            turn.close()


async def test_leaving_a_reply_early_cancels_it_and_keeps_the_partial_text() -> None:
    slow = {"type": "long", "time_per_token_sec": 0.01}
    async with mock(mock_params=slow) as chat_stream:
        conversation = chat_stream.new_conversation()
        received = []
        async with aclosing(chat_stream.chat(conversation, "hi")) as deltas:
            async for delta in deltas:
                received.append(delta)
                if len(received) == 3:
                    break
        assert chat_stream.statistics().running == 0
        reply_message = conversation.messages[-1]
        assert reply_message.status is MessageStatus.CANCELLED
        assert reply_message.content == "".join(received)
        # The conversation is usable again right away.
        assert "".join(await reply(chat_stream, conversation, "again")) == mock_texts.LONG_EN


async def test_cancellation_of_the_waiting_task_frees_its_place() -> None:
    slow = {"type": "long", "time_per_token_sec": 0.01}
    async with mock(
        num_of_concurrent_executions=1, max_queue_size=2, mock_params=slow
    ) as chat_stream:
        blocker = await chat_stream.start_turn(chat_stream.new_conversation(), "x")
        conversation = chat_stream.new_conversation()
        with anyio.move_on_after(0.1):
            await reply(chat_stream, conversation, "queued then cancelled")
        stats = chat_stream.statistics()
        assert (stats.running, stats.waiting) == (1, 0)
        assert conversation.messages[-1].status is MessageStatus.CANCELLED
        blocker.close()
        assert chat_stream.statistics().running == 0


async def test_a_second_turn_on_the_same_conversation_is_refused() -> None:
    slow = {"type": "long", "time_per_token_sec": 0.01}
    async with mock(mock_params=slow) as chat_stream:
        conversation = chat_stream.new_conversation()
        turn = await chat_stream.start_turn(conversation, "first")
        with pytest.raises(TurnInFlightError) as caught:
            await chat_stream.start_turn(conversation, "second")
        assert caught.value.status_hint == 409
        assert [m.content for m in conversation.messages] == ["first", ""]
        turn.close()


async def test_random_cancel_and_finish_interleavings_leak_no_slot() -> None:
    rng = random.Random(7)
    params = {"type": "echo", "time_per_token_sec": 0.002}
    async with mock(
        num_of_concurrent_executions=3, max_queue_size=4, mock_params=params
    ) as chat_stream:
        conversations = [chat_stream.new_conversation() for _ in range(50)]
        outcomes: list[str] = []

        async def one(conversation: Conversation, deadline: float) -> None:
            with anyio.move_on_after(deadline):
                try:
                    await reply(chat_stream, conversation, "a b c d e f g h")
                    outcomes.append("finished")
                except RequestRejected:
                    outcomes.append("rejected")
                    return
            if len(outcomes) < len(conversations) and (
                not conversation.messages or conversation.messages[-1].finish_reason is None
            ):
                outcomes.append("cancelled")

        async with anyio.create_task_group() as tg:
            for conversation in conversations:
                tg.start_soon(one, conversation, rng.uniform(0.0, 0.06))
                await anyio.sleep(rng.uniform(0, 0.004))
        stats = chat_stream.statistics()
        assert (stats.running, stats.waiting) == (0, 0)
        assert stats.admitted_total == stats.finished_total + stats.cancelled_total - (
            stats.cancelled_total - (stats.admitted_total - stats.finished_total)
        )
        assert (
            stats.rejected_total
            + stats.admitted_total
            + sum(
                1
                for c in conversations
                if c.messages and c.messages[-1].finish_reason == "cancelled"
            )
            >= len(conversations) - stats.rejected_total
        )
        assert not any(c.in_flight for c in conversations)
        # Every slot is still usable: three full replies at once.
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(reply, chat_stream, chat_stream.new_conversation(), "ok")
        assert chat_stream.statistics().running == 0


async def test_console_chat_yields_response_update_and_position() -> None:
    async with mock() as chat_stream:
        items = [item async for item in chat_stream.handle_console_input("hello")]
    assert items[0][2] == "begin"
    assert items[-1] == (mock_texts.ROUND_EN[0], "", "end")
    assert all(pos == "mid" for _, _, pos in items[1:-1])
    assert "".join(update for _, update, _ in items) == mock_texts.ROUND_EN[0]
    assert items[-2][0] == mock_texts.ROUND_EN[0]


async def test_tiny_model_chat_matches_generate(tiny_model: tuple[Any, Any]) -> None:
    import torch

    model, tokenizer = tiny_model
    forward_threads: set[int] = set()
    hook = model.register_forward_pre_hook(
        lambda *_: forward_threads.add(threading.get_ident()), with_kwargs=False
    )
    try:
        chat_stream = ChatStream(
            model=model,
            tokenizer=tokenizer,
            num_of_concurrent_executions=4,
            temperature=0.0,
            max_new_tokens=10,
            context_len=256,
        )
        async with chat_stream:
            conversations = [chat_stream.new_conversation() for _ in range(4)]
            questions = ["hello", "こんにちは 世界", "the quick brown fox", "テスト"]
            replies: dict[int, str] = {}

            async def ask(index: int) -> None:
                replies[index] = "".join(
                    await reply(chat_stream, conversations[index], questions[index])
                )

            async with anyio.create_task_group() as tg:
                for index in range(4):
                    tg.start_soon(ask, index)
    finally:
        hook.remove()
    assert threading.get_ident() not in forward_threads, "a forward ran on the event loop"
    for index, question in enumerate(questions):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        prompt = tokenizer(ids, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=10,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(prompt) :].tolist()
        if tokenizer.eos_token_id in out:
            out = out[: out.index(tokenizer.eos_token_id)]
        # A reply that ends inside a character drops its bytes (no U+FFFD at the end).
        expected = tokenizer.decode(out, skip_special_tokens=True).lstrip().rstrip("\ufffd")
        assert replies[index] == expected
        assert conversations[index].messages[1].content == replies[index]


async def test_model_error_in_one_request_leaves_the_others_streaming(
    tiny_model: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = tiny_model
    poison = "絵文字🙂"

    def refuse(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        # A forward with the poisoned prompt in any of its rows fails as a whole, as a real
        # model error in a batched forward would.
        for row in kwargs["input_ids"].tolist():
            if poison in tokenizer.decode(row):
                raise RuntimeError("poisoned prompt: other rows " + repr(kwargs["input_ids"]))

    questions = ["hello world", "the quick brown fox", poison, "テスト", "one more"]

    async def chat_all(chat_stream: ChatStream) -> dict[str, object]:
        results: dict[str, object] = {}

        async def run(text: str) -> None:
            try:
                results[text] = "".join(await reply(chat_stream, Conversation(), text))
            except ChatStreamError as error:
                results[text] = error

        async with anyio.create_task_group() as tg:
            for text in questions:
                tg.start_soon(run, text)
        return results

    def make() -> ChatStream:
        return ChatStream(
            model=model,
            tokenizer=tokenizer,
            num_of_concurrent_executions=5,
            temperature=0.0,
            max_new_tokens=8,
            context_len=256,
        )

    async with make() as chat_stream:
        expected = await chat_all(chat_stream)
    hook = model.register_forward_pre_hook(refuse, with_kwargs=True)
    try:
        with caplog.at_level(logging.WARNING, logger="chatstream"):
            async with make() as chat_stream:
                results = await chat_all(chat_stream)
                assert chat_stream.statistics().running == 0
    finally:
        hook.remove()
    assert isinstance(results[poison], ChatStreamError)
    assert "the model failed on this request (RuntimeError)" in str(results[poison])
    for text in questions:
        if text != poison:
            # The others: the very reply they get without the poisoned one among them.
            assert results[text] == expected[text], text
    # Nobody's message quotes the exception (which names other rows' input).
    assert "other rows" not in str(results[poison])
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "failed: the model failed on this request" in errors[0].message


async def test_event_loop_stays_responsive_during_prefill_and_decode(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    lags: list[float] = []
    done = anyio.Event()

    async def probe() -> None:
        while not done.is_set():
            start = anyio.current_time()
            await anyio.sleep(0.005)
            lags.append(anyio.current_time() - start - 0.005)

    async with ChatStream(
        model=model,
        tokenizer=tokenizer,
        num_of_concurrent_executions=8,
        temperature=0.0,
        max_new_tokens=32,
        context_len=512,
    ) as chat_stream:
        long_input = " ".join(["the quick brown fox jumps over the lazy dog 世界"] * 25)
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            async with anyio.create_task_group() as chats:
                for _ in range(8):
                    chats.start_soon(reply, chat_stream, chat_stream.new_conversation(), long_input)
            done.set()
    lags.sort()
    p99 = lags[int(len(lags) * 0.99) - 1]
    print(
        f"loop lag over {len(lags)} probes: p50 {lags[len(lags) // 2] * 1e3:.2f} ms, "
        f"p99 {p99 * 1e3:.2f} ms, max {lags[-1] * 1e3:.2f} ms"
    )
    # A generous sanity bound only (timings belong in benchmarks/): a forward pass or a
    # prompt tokenization on the loop would show up here as a stall of its whole length.
    assert lags[-1] < 1.0


async def test_options_are_validated_and_instances_share_nothing() -> None:
    with pytest.raises(ConfigError) as caught:
        ChatStream(use_mock_response=True, max_queue_size=-1)
    assert caught.value.option == "max_queue_size"
    with pytest.raises(ConfigError, match="model"):
        ChatStream()
    with pytest.raises(ConfigError, match=r"mock_params\.kind"):
        ChatStream(use_mock_response=True, mock_params={"kind": "round"})
    with pytest.raises(ConfigError, match="chat_prompt_clazz"):
        ChatStream(use_mock_response=True, chat_prompt_clazz=dict)  # type: ignore[arg-type]
    logger = logging.getLogger("chatstream")
    handlers = list(logger.handlers)
    first, second = ChatStream(use_mock_response=True), ChatStream(use_mock_response=True)
    assert logger.handlers == handlers, "no handler may be added per instance"
    assert first.config.mock_params.type == "round"  # the documented default, really
    assert first.config is not second.config
    assert first.num_gpus == 0
    async with first:
        with pytest.raises(RuntimeError, match="already running"):
            await first.__aenter__()
    assert not first.running


def test_health_says_degraded_while_the_model_fails_everything(
    tiny_model: tuple[Any, Any], anyio_backend: str
) -> None:
    import copy

    import torch
    from starlette.testclient import TestClient

    from chatstream.adapters.starlette import HttpOptions, create_app

    model, tokenizer = tiny_model
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.get_output_embeddings().weight.fill_(float("nan"))
    chat_stream = ChatStream(
        model=broken, tokenizer=tokenizer, temperature=0.0, max_new_tokens=4, context_len=128
    )
    app = create_app(
        chat_stream, secret_key="x", http_options=HttpOptions(degraded_after_failures=3)
    )
    with TestClient(app, backend=anyio_backend) as client:  # type: ignore[arg-type]
        assert client.get("/health").json()["status"] == "ok"
        for attempt in range(3):
            client.cookies.clear()
            text = client.post("/chat_stream", json={"user_input": f"hi {attempt}"}).text
            assert text == "<::ERROR::>the model produced NaN logits<::EOS::>"
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json() == {
            "status": "degraded",
            "detail": "the last 3 requests failed in the model",
        }
        # Mended (here: the weights put back), the next success clears it.
        with torch.no_grad():
            broken.get_output_embeddings().weight.copy_(model.get_output_embeddings().weight)
        client.cookies.clear()
        assert "<::ERROR::>" not in client.post("/chat_stream", json={"user_input": "hi"}).text
        assert client.get("/health").json()["status"] == "ok"
