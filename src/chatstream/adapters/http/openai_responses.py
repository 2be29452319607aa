"""The answers of the OpenAI-compatible routes, as pydantic models.

Every body and every streamed chunk the routes send is one of these, serialized with
``model_dump_json``: the shapes are written down once, typed, and what a field may hold is
checked where the answer is made. Fields OpenAI sends as ``null`` are sent as ``null``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatLogprobs",
    "ChatMessage",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "DetokenizeResponse",
    "FunctionCall",
    "LegacyLogprobs",
    "TokenLogprobEntry",
    "TokenizeResponse",
    "ToolCall",
    "TopLogprob",
    "Usage",
    "UsageDetails",
    "sse",
]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UsageDetails(_Answer):
    #: Prompt tokens whose KV was already held (prefix reuse).
    cached_tokens: int


class Usage(_Answer):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: UsageDetails


class TopLogprob(_Answer):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Answer):
    content: list[TokenLogprobEntry]
    refusal: None = None


class LegacyLogprobs(_Answer):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class FunctionCall(_Answer):
    name: str
    arguments: str


class ToolCall(_Answer):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Answer):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(_Answer):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletion(_Answer):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChunkChoice(_Answer):
    index: int
    #: ``role``, ``content``, ``tool_calls``: only those that change.
    delta: dict[str, Any]
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(_Answer):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(_Answer):
    index: int
    text: str
    logprobs: LegacyLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class Completion(_Answer):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(_Answer):
    """A streamed piece of a text completion (OpenAI streams the same object as the whole)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TokenizeResponse(_Answer):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(_Answer):
    prompt: str


def sse(answer: BaseModel) -> bytes:
    """One Server-Sent Event carrying ``answer``; ``usage`` only where there is one."""
    exclude = {"usage"} if getattr(answer, "usage", True) is None else None
    return b"data: " + answer.model_dump_json(exclude=exclude).encode() + b"\n\n"
