"""Reading a tool call out of a reply, whole or as it streams, and the schema of a call."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from chatstream.adapters.http.openai_tools import (
    ToolCallStream,
    forced_call_schema,
    parse_tool_call,
)

NAMES = ("get_weather", "now")


def test_a_whole_reply_is_a_call_only_when_it_is_exactly_one_call_to_a_known_function() -> None:
    call = parse_tool_call(' {"name": "now", "arguments": {}} ', NAMES)
    assert call is not None and (call.name, call.arguments) == ("now", "{}")
    tagged = parse_tool_call(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "京都"}}\n</tool_call>', NAMES
    )
    assert tagged is not None and json.loads(tagged.arguments) == {"city": "京都"}
    for prose in (
        "It is sunny.",
        '{"name": "other", "arguments": {}}',
        '{"name": "now", "arguments": "{}"}',
        '{"name": "now", "arguments": {}, "extra": 1}',
        '[{"name": "now", "arguments": {}}]',
        '{"name": "now", "arguments": {}',
    ):
        assert parse_tool_call(prose, NAMES) is None, prose


CALLS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["get_weather", 'say "hi"', "日本"]),
        "arguments": st.dictionaries(
            st.text(max_size=5),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3)
                ),
                max_leaves=6,
            ),
            max_size=4,
        ),
    }
)


@given(
    call=CALLS,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    tag=st.booleans(),
)
def test_streamed_pieces_add_up_to_the_arguments(
    call: dict[str, object], cuts: list[int], tag: bool
) -> None:
    text = json.dumps({"name": call["name"], "arguments": call["arguments"]}, ensure_ascii=False)
    if tag:
        text = f"<tool_call>\n{text}\n</tool_call>"
    stream = ToolCallStream()
    names, arguments = [], ""
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    for start, end in itertools.pairwise(points):
        name, piece = stream.feed(text[start:end])
        if name is not None:
            names.append(name)
        arguments += piece
    arguments += stream.finish()
    assert names == [call["name"]]
    assert json.loads(arguments) == call["arguments"]


def test_nothing_streams_before_the_head_of_the_call() -> None:
    stream = ToolCallStream()
    assert stream.feed('{"name": "no') == (None, "")
    assert not stream.started
    assert stream.feed('w", "arguments": {"a"') == ("now", '{"a"')
    assert stream.feed(": {}}") == (None, ": {")  # the closing braces are held
    assert stream.feed("}") == (None, "")
    assert stream.finish() == "}}"


def test_a_forced_call_schema() -> None:
    weather: Any = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        },
    }
    clock = {"type": "function", "function": {"name": "now"}}
    named = forced_call_schema([weather, clock], "now")
    assert list(named["properties"]) == ["name", "arguments"]  # the name streams first
    assert named["properties"]["name"] == {"const": "now"}
    assert named["properties"]["arguments"]["additionalProperties"] is False  # no parameters
    required = forced_call_schema([weather, clock], None)
    first, _ = required["anyOf"]
    assert first["properties"]["arguments"]["additionalProperties"] is False  # strict
    loose = {**weather, "function": {**weather["function"], "strict": False}}
    assert (
        "additionalProperties" not in forced_call_schema([loose], None)["properties"]["arguments"]
    )
