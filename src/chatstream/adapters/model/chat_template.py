"""Rendering with the tokenizer's own chat template: a prompt class for conversations, and
OpenAI-style message lists (tools, tool results, a prefilled reply) for the stateless API."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from chatstream.core import AbstractChatPrompt, PromptOptions

__all__ = [
    "chat_template_prompt_class",
    "generic_tool_messages",
    "has_chat_template",
    "render_chat",
    "supports_tools",
    "template_messages",
]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_template_prompt_class(tokenizer: Any) -> type[AbstractChatPrompt]:
    """A prompt class bound to ``tokenizer`` that renders ``tokenizer.apply_chat_template``.

    Roles are "user" and "assistant"; the system text, when set, becomes a system message.
    The template adds its own special tokens, so the prompt is encoded without more.
    """

    class ChatPromptChatTemplate(AbstractChatPrompt):
        add_special_tokens = False

        def __init__(self) -> None:
            super().__init__()
            self.set_requester("user")
            self.set_responder("assistant")

        def get_stop_strs(self) -> list[str]:
            return []

        def build_initial_prompt(self, chat_prompt: AbstractChatPrompt) -> None:
            pass

        def create_prompt(self, opts: PromptOptions | None = None) -> str:
            contents = self.get_contents(opts)
            if not self.is_chat_mode_enabled():
                last = self.get_requester_last_msg()
                return "" if last is None else last
            messages = [{"role": "system", "content": self.system}] if self.system else []
            open_reply = False
            for content in contents:
                message = content.get_message()
                if message is None:
                    open_reply = True
                    continue
                messages.append({"role": content.get_role(), "content": message})
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=open_reply
            )
            return str(text)

    return ChatPromptChatTemplate


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` list itself."""
    return "tools" in str(getattr(tokenizer, "chat_template", "") or "")


def generic_tool_messages(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The messages for a template (or prompt class) that knows nothing of tools: the tools
    described in the system message with the one call format chatstream parses (a JSON
    object with ``name`` and ``arguments``), calls written out as that JSON in the assistant's
    text, and tool results as user messages that say which call they answer."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call id -> function name
    for message in messages:
        role = message["role"]
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call["function"]
                names[str(call.get("id", ""))] = function["name"]
                calls.append(json.dumps({"name": function["name"], "arguments": _arguments(call)}))
            text = str(message.get("content") or "")
            out.append({"role": "assistant", "content": "\n".join([text, *calls]).strip()})
        elif role == "tool":
            call_id = str(message.get("tool_call_id", ""))
            name = names.get(call_id, "a function")
            out.append(
                {"role": "user", "content": f"Result of {name} ({call_id}):\n{message['content']}"}
            )
        else:
            out.append({"role": role, "content": message.get("content") or ""})
    if tools:
        described = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
        preamble = (
            "You can call functions. To call one, answer with only a JSON object "
            '{"name": <the function name>, "arguments": <an object of its arguments>}.\n'
            f"The functions:\n{described}"
        )
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{preamble}"}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates expect them: ``developer`` is ``system``, a call's
    arguments are an object (OpenAI sends a JSON string), and content is never null."""
    out: list[dict[str, Any]] = []
    for message in messages:
        converted = dict(message)
        if converted["role"] == "developer":
            converted["role"] = "system"
        converted["content"] = converted.get("content") or ""
        if converted.get("tool_calls"):
            converted["tool_calls"] = [
                {**call, "function": {**call["function"], "arguments": _arguments(call)}}
                for call in converted["tool_calls"]
            ]
        out.append(converted)
    return out


def _arguments(call: Mapping[str, Any]) -> Any:
    arguments = call["function"]["arguments"]
    try:
        return json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return arguments


def render_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text of OpenAI-style messages through the tokenizer's chat template. An
    assistant message last is continued (a prefill) rather than closed and answered; without
    ``add_generation_prompt`` the assistant's opening is left out (to count tokens)."""
    prefill = bool(messages) and messages[-1]["role"] == "assistant"
    converted = template_messages(messages)
    options: dict[str, Any] = {}
    if tools and supports_tools(tokenizer):
        options["tools"] = [dict(tool) for tool in tools]
    elif tools or any(m["role"] == "tool" or m.get("tool_calls") for m in converted):
        converted = generic_tool_messages(converted, tools or ())
    if prefill:
        options["continue_final_message"] = True
    text = tokenizer.apply_chat_template(
        converted,
        tokenize=False,
        add_generation_prompt=add_generation_prompt and not prefill,
        **options,
    )
    return str(text)
