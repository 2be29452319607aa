"""The request bodies of the OpenAI-compatible routes, as pydantic models.

Every field OpenAI's reference gives ``/v1/chat/completions`` and ``/v1/completions`` is
declared here, with the extras vLLM's server takes (``top_k``, ``min_p``,
``repetition_penalty``, ``min_tokens``, ``ignore_eos``, ``stop_token_ids``): a field is
honoured, or refused with a 400 that names it (:data:`REFUSED`), and an undeclared field is
refused as OpenAI refuses it. ``null`` always means "the default". Validation errors become
OpenAI's error shape with ``param`` spelled as the client sent it (``messages[2].content``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chatstream.core import MAX_SEED, MAX_TOP_LOGPROBS

__all__ = [
    "MAX_CHOICES",
    "AssistantMessage",
    "ChatCompletionRequest",
    "CompletionRequest",
    "FunctionTool",
    "JsonSchemaFormat",
    "Message",
    "NamedToolChoice",
    "RequestError",
    "SystemMessage",
    "TextPart",
    "ToolMessage",
    "UserMessage",
    "parse_request",
]

#: The most choices one request may ask for (``n``): each is a row of the batch.
MAX_CHOICES = 16


_BodyT = TypeVar("_BodyT", bound=BaseModel)


class RequestError(Exception):
    """A 400 in OpenAI's shape: ``param`` names the field as the client sent it."""

    def __init__(self, param: str | None, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


Content = str | list[TextPart]


class FunctionCall(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Body):
    #: ``developer`` is the newer name of ``system``.
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Body):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Body):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Body):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDefinition(_Body):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class TextFormat(_Body):
    type: Literal["text"]


class JsonObjectFormat(_Body):
    type: Literal["json_object"]


class JsonSchema(_Body):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    #: ``schema`` shadows a BaseModel attribute, hence the alias.
    json_schema: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class JsonSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class StreamOptions(_Body):
    include_usage: bool | None = None
    #: vLLM's: usage in every chunk.
    continuous_usage_stats: bool | None = None


Penalty = Annotated[float, Field(ge=-2, le=2)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Stop = str | Annotated[list[str], Field(max_length=16)]


class _SamplingFields(_Body):
    """What both routes share."""

    #: Optional (as in vLLM's and llama.cpp's servers): there is one model.
    model: str | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field()] | None = (
        None
    )
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    user: str | None = None
    # vLLM's extras.
    top_k: int | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _stream_options_need_a_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise _field_error("stream_options", "only allowed when stream is true")
        if self.top_k is not None and self.top_k != -1 and self.top_k < 1:
            raise _field_error("top_k", "must be -1 (off) or at least 1")
        return self


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    #: Accepted; at most one call is made per reply.
    parallel_tool_calls: bool | None = None
    #: Nothing is stored: only false is accepted.
    store: Literal[False] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise _field_error("top_logprobs", "only allowed when logprobs is true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise _field_error("tool_choice", "only allowed when tools are given")
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise _field_error("tools", "two tools have the same name")
        named = (
            self.tool_choice.function.name
            if isinstance(self.tool_choice, NamedToolChoice)
            else None
        )
        if named is not None and named not in names:
            raise _field_error("tool_choice", "names a function that is not in tools")
        if (
            self.tools
            and self.tool_choice != "none"
            and self.response_format is not None
            and not isinstance(self.response_format, TextFormat)
        ):
            raise _field_error("response_format", "cannot be combined with tools")
        return self


class CompletionRequest(_SamplingFields):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)]
        | (Annotated[list[int], Field(min_length=1)])
        | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
    )
    #: OpenAI's default for this route.
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool | None = None
    #: Only the default (no text after the insertion point) is supported.
    suffix: None = None
    #: Only ``best_of`` equal to ``n`` (or absent) is supported.
    best_of: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise _field_error("best_of", "only best_of equal to n is supported")
        if self.echo and self.logprobs is not None:
            raise _field_error("echo", "echo with logprobs is not supported")
        return self


def _field_error(param: str, message: str) -> ValueError:
    return ValueError(f"@{param}@{message}")


def parse_request(model: type[_BodyT], body: dict[str, Any]) -> _BodyT:
    """The body as ``model``.

    Raises:
        RequestError: the first field's problem, naming the field as the client spells it.
    """
    try:
        # Strict, as JSON: "yes" is not a boolean and "5" not a number.
        return model.model_validate_json(json.dumps(body), strict=True)
    except ValidationError as error:
        raise _request_error(_most_specific(error.errors())) from None


def _most_specific(errors: list[Any]) -> Any:
    """The deepest error of the first field in error: a value that matches no member of a
    union gets one error per member, and the deepest names what is wrong (``content[1].type``
    rather than "content is not a string")."""
    first = errors[0]
    field = first["loc"][:1]
    same_field = [e for e in errors if tuple(e["loc"][:1]) == tuple(field)]
    # At equal depth, a member whose shape fits says more than "should be a string".
    return max(same_field, key=lambda e: (len(e["loc"]), not str(e["type"]).endswith("_type")))


def _request_error(detail: Any) -> RequestError:
    location = tuple(detail.get("loc", ()))
    param = _param(location)
    kind = detail.get("type", "")
    message = str(detail.get("msg", "invalid"))
    if kind == "union_tag_invalid":
        key = str(detail.get("ctx", {}).get("discriminator", "")).strip("'")
        param = f"{param}.{key}" if param else key
    if message.startswith("Value error, @"):
        # A check across fields, raised with the field it is about.
        _, name, text = message.split("@", 2)
        param = name if not param else f"{param}.{name}"
        return RequestError(param, f"Invalid value for '{param}': {text}.")
    message = message.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return RequestError(
            param, f"Unrecognized request argument supplied: {param}", "unknown_parameter"
        )
    if kind == "missing":
        return RequestError(param, f"Missing required parameter: '{param}'.", "missing_required")
    return RequestError(param, f"Invalid value for '{param}': {message[:1].lower()}{message[1:]}.")


#: The members of the unions, as pydantic names them in an error's location.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none"})
_ROLE_TAGS = frozenset({"system", "developer", "user", "assistant", "tool"})
_FORMAT_TAGS = frozenset({"text", "json_object", "json_schema"})


def _param(location: tuple[Any, ...]) -> str:
    """``("messages", 2, "user", "content", "str")`` → ``messages[2].content``."""
    parts: list[str] = []
    for index, part in enumerate(location):
        if isinstance(part, int):
            parts.append(f"[{part}]")
            continue
        name = str(part)
        previous = location[index - 1] if index else None
        if (
            "[" in name
            or name[:1].isupper()  # a model class, as pydantic names a union member
            or name in _TYPE_TAGS
            or (isinstance(previous, int) and location[0] == "messages" and name in _ROLE_TAGS)
            or (previous == "response_format" and name in _FORMAT_TAGS)
        ):
            continue
        parts.append(name if not parts else f".{name}")
    return "".join(parts)
