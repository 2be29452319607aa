"""chatstream in trio-native code: a nursery holding a ChatStream, trio's own primitives."""

from __future__ import annotations

import pytest
import trio

from chatstream import ChatStream
from chatstream.adapters.model import mock_texts


@pytest.mark.trio
async def test_chat_stream_in_a_trio_nursery() -> None:
    chat_stream = ChatStream(use_mock_response=True, mock_params={"time_per_token_sec": 0})
    replies: list[str] = []

    async def user(name: str) -> None:
        conversation = chat_stream.new_conversation()
        text = "".join([d async for d in chat_stream.chat(conversation, f"I am {name}")])
        replies.append(text)

    async with chat_stream, trio.open_nursery() as nursery:
        for name in ("ann", "bob"):
            nursery.start_soon(user, name)
    assert replies == [mock_texts.ROUND_EN[0]] * 2


@pytest.mark.trio
async def test_trio_cancel_scope_cancels_a_reply() -> None:
    slow = {"type": "long", "time_per_token_sec": 0.01}
    async with ChatStream(use_mock_response=True, mock_params=slow) as chat_stream:
        conversation = chat_stream.new_conversation()
        with trio.move_on_after(0.1):
            async for _ in chat_stream.chat(conversation, "go"):
                pass
        assert chat_stream.statistics().running == 0
        assert conversation.messages[-1].finish_reason == "cancelled"
