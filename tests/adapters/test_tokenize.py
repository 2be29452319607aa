"""The service's tokenizer side on a real tiny model (fast tokenizer, chat template), on both
event loops: what ``/tokenize`` and ``/detokenize`` answer."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from chatstream import ChatStream
from chatstream.core import ConfigError, Finished
from tests.tiny_model import load_tiny_model

pytestmark = pytest.mark.anyio

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the quick brown fox"},
]


def tiny(tiny_model: tuple[Any, Any], **options: Any) -> ChatStream:
    model, tokenizer = tiny_model
    return ChatStream(
        model=model,
        tokenizer=tokenizer,
        temperature=0.0,
        max_new_tokens=2,
        context_len=256,
        **options,
    )


async def test_texts_tokenize_as_the_tokenizer_does(tiny_model: tuple[Any, Any]) -> None:
    tokenizer = tiny_model[1]
    async with tiny(tiny_model) as chat_stream:
        text = "hello, こんにちは"
        assert await chat_stream.tokenize(text) == tokenizer(text)["input_ids"]
        bare = await chat_stream.tokenize(text, add_special_tokens=False)
        assert bare == tokenizer.encode(text, add_special_tokens=False)
        assert await chat_stream.detokenize(bare) == text
        assert chat_stream.max_model_len == 256


async def test_messages_tokenize_as_a_completion_renders_them(
    tiny_model: tuple[Any, Any],
) -> None:
    tokenizer = tiny_model[1]
    async with tiny(tiny_model) as chat_stream:
        tokens = await chat_stream.tokenize(MESSAGES)
        rendered = tokenizer.apply_chat_template(
            MESSAGES, tokenize=False, add_generation_prompt=True
        )
        assert tokens == tokenizer.encode(rendered, add_special_tokens=False)
        handle = await chat_stream.submit_messages(MESSAGES)
        events = [event async for event in handle]
        assert isinstance(events[-1], Finished)
        assert events[-1].usage.prompt_tokens == len(tokens)
        without = await chat_stream.tokenize(MESSAGES, add_generation_prompt=False)
        assert len(without) < len(tokens) and tokens[: len(without)] == without
        # Special tokens are skipped in the text, as in replies.
        assert "<|im_start|>" not in await chat_stream.detokenize(tokens)


async def test_ids_outside_the_tokenizer_are_refused(tiny_model: tuple[Any, Any]) -> None:
    size = len(tiny_model[1])
    async with tiny(tiny_model) as chat_stream:
        await chat_stream.detokenize([0, size - 1])
        for outside in ([size], [-1], [1, 2**31]):
            with pytest.raises(ConfigError, match=rf"tokens: .*0 to {size - 1}") as caught:
                await chat_stream.detokenize(outside)
            assert caught.value.option == "tokens"


async def test_the_served_name_is_the_model_id(tiny_model: tuple[Any, Any]) -> None:
    assert tiny(tiny_model).model_id != "team/tiny"
    assert tiny(tiny_model, served_model_name="team/tiny").model_id == "team/tiny"


async def test_messages_a_chat_template_refuses_are_a_config_error(
    tiny_model_dir: pathlib.Path,
) -> None:
    model, tokenizer = load_tiny_model(tiny_model_dir)
    tokenizer.chat_template = (  # type: ignore[attr-defined]
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System messages are not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    async with tiny((model, tokenizer)) as chat_stream:
        with pytest.raises(ConfigError, match="System messages are not supported") as caught:
            await chat_stream.tokenize(MESSAGES)
        assert caught.value.option == "messages"
        with pytest.raises(ConfigError, match="refuses"):
            await chat_stream.submit_messages(MESSAGES)  # a completion is a 400 too
        assert await chat_stream.tokenize(MESSAGES[1:])
