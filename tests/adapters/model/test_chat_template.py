"""OpenAI-style message lists through a tokenizer's chat template: tools given to a template
that renders them, described in a system message otherwise; calls and results in history; a
prefilled reply continued."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from chatstream.adapters.model.chat_template import (
    generic_tool_messages,
    render_chat,
    supports_tools,
)

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
HISTORY: list[dict[str, Any]] = [
    {"role": "developer", "content": "be brief"},
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "snow"},
]
TOOL_TEMPLATE = (
    "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}"
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }}"
    "{{ c.function.arguments | tojson }}</call>{% endfor %}{% endif %}</{{ m['role'] }}>"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture
def tool_tokenizer(tiny_model: tuple[Any, Any]) -> Any:
    tokenizer = copy.copy(tiny_model[1])
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def test_a_template_that_renders_tools_gets_them_and_the_calls_as_objects(
    tool_tokenizer: Any,
) -> None:
    assert supports_tools(tool_tokenizer)
    text = render_chat(tool_tokenizer, HISTORY, [WEATHER])
    assert text.startswith("<tools>") and '"get_weather"' in text
    assert '<call>get_weather{"city": "Oslo"}</call>' in text  # arguments as an object
    assert "<system>be brief</system>" in text  # developer is system
    assert "<tool>snow</tool>" in text and text.endswith("<assistant>")


def test_a_template_without_tools_gets_them_described(tiny_model: tuple[Any, Any]) -> None:
    tokenizer = tiny_model[1]
    assert not supports_tools(tokenizer)
    text = render_chat(tokenizer, HISTORY, [WEATHER])
    assert "You can call functions" in text and '"name": "get_weather"' in text
    assert '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}' not in text
    assert "Result of get_weather (c1):\nsnow" in text
    assert "<|im_start|>tool" not in text


def test_the_generic_messages_keep_the_system_message_first() -> None:
    messages = generic_tool_messages(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], [WEATHER]
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].startswith("be brief\n\nYou can call functions")
    call = generic_tool_messages(HISTORY[2:3], [])[0]["content"]
    assert json.loads(call) == {"name": "get_weather", "arguments": {"city": "Oslo"}}


def test_an_assistant_message_last_is_continued(tiny_model: tuple[Any, Any]) -> None:
    tokenizer = tiny_model[1]
    text = render_chat(
        tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]
    )
    assert text.endswith("<|im_start|>assistant\nHel")
