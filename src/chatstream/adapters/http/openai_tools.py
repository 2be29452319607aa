"""Tool calls of the OpenAI API: the JSON schema a forced call is constrained to, and the
reading of a call out of a reply, whole or as it streams.

A call is the JSON object ``{"name": ..., "arguments": {...}}``, optionally wrapped in
``<tool_call>`` tags (the Hermes/Qwen convention chat templates with tools use). Written here
because the format is chatstream's own contract between the tool prompt
(:func:`~chatstream.adapters.model.chat_template.generic_tool_messages`), the grammar and this
parser; the grammar engine guarantees a forced call parses.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatstream.core.json_schema import close_objects

__all__ = ["ParsedCall", "ToolCallStream", "call_id", "forced_call_schema", "parse_tool_call"]

_OPEN_TAG = "<tool_call>"
_CLOSE_TAG = "</tool_call>"
# The start of a call, up to the first character of its arguments.
_HEADER = re.compile(
    r'\s*(?:<tool_call>\s*)?\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)'
)


#: OpenAI: a function declared without parameters takes none.
_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    #: The arguments as a JSON text, the way OpenAI returns them.
    arguments: str


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def forced_call_schema(tools: Sequence[Mapping[str, Any]], name: str | None) -> dict[str, Any]:
    """The JSON schema of one call: to the function ``name``, or to any of ``tools``
    (``tool_choice: "required"``). ``name`` comes first so that a call streams its name before
    its arguments; a function with ``"strict": true`` takes no arguments but those it lists
    (OpenAI: a function without ``parameters`` takes none)."""
    calls = []
    for tool in tools:
        function = tool["function"]
        if name is not None and function["name"] != name:
            continue
        parameters = function.get("parameters") or _NO_ARGUMENTS
        if function.get("strict"):
            parameters = close_objects(parameters)
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def parse_tool_call(text: str, names: Sequence[str]) -> ParsedCall | None:
    """The call a whole reply makes, or None when it is not exactly one call to one of
    ``names`` (then the reply is plain content)."""
    body = text.strip()
    if body.startswith(_OPEN_TAG):
        body = body.removeprefix(_OPEN_TAG).strip()
        body = body.removesuffix(_CLOSE_TAG).strip()
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
        return None
    name, arguments = value["name"], value["arguments"]
    if name not in names or not isinstance(arguments, dict):
        return None
    return ParsedCall(name, json.dumps(arguments, ensure_ascii=False))


@dataclass(slots=True)
class ToolCallStream:
    """Reads one call out of a reply as it streams: ``feed`` returns the function's name once
    the call's head is complete, then pieces of the arguments; the call's closing brace (and a
    closing tag) is held back until :meth:`finish`. ``started`` says whether the head was seen.
    """

    started: bool = False
    _buffer: str = ""
    _sent: int = field(default=0)  # characters of the arguments already returned

    def feed(self, text: str) -> tuple[str | None, str]:
        """New reply text in; the function name (once, when known) and new argument text."""
        self._buffer += text
        name = None
        if not self.started:
            match = _HEADER.match(self._buffer)
            if match is None:
                return None, ""
            self.started = True
            name = json.loads(f'"{match.group(1)}"')
            self._buffer = self._buffer[match.end() :]
        held = len(self._buffer) - len(_held_tail(self._buffer))
        piece = self._buffer[self._sent : held] if held > self._sent else ""
        self._sent = max(self._sent, held)
        return name, piece

    def finish(self) -> str:
        """The rest of the arguments, without the call's closing brace."""
        rest = self._buffer.rstrip().removesuffix(_CLOSE_TAG).rstrip()
        rest = rest.removesuffix("}")
        piece = rest[self._sent :]
        self._sent = len(rest)
        return piece


def _held_tail(text: str) -> str:
    """The end of ``text`` that may still turn out to close the call: braces, white space,
    a closing tag, and a closing tag's beginning at the very end."""
    end = len(text)
    for size in range(len(_CLOSE_TAG) - 1, 0, -1):
        if text.endswith(_CLOSE_TAG[:size]):
            end -= size
            break
    while True:
        head = text[:end].rstrip()
        if head.endswith(_CLOSE_TAG):
            end = len(head) - len(_CLOSE_TAG)
        elif head.endswith("}"):
            end = len(head) - 1
        else:
            return text[len(head) :]
