"""An OpenAI-compatible API: ``POST /v1/chat/completions``, ``POST /v1/completions`` and
``GET /v1/models``.

Stateless (the client sends the whole conversation or prompt), streamed as Server-Sent Events
ending in ``data: [DONE]``, or answered in one JSON object. Bodies are validated by the
pydantic models of :mod:`.openai_schemas`; errors use OpenAI's ``{"error": {...}}`` shape with
``param`` naming the field as the client sent it; a full queue is always a 429 here. ``n``
choices are ``n`` rows of the batch (each its own request, seeded ``seed + i``); their events
are merged into one stream. The official ``openai`` client and LangChain work against it
unmodified.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream.adapters.driver import RequestHandle
from chatstream.adapters.turn import RequestRejected
from chatstream.core import (
    MAX_SEED,
    ConfigError,
    Grammar,
    PromptTooLongError,
    RejectReason,
)

from .common import BadRequest, RequestContext, read_json_object
from .metrics import RequestTimer
from .openai_answers import Answer, Plan, Route, ToolMode, WholeResponse, closer, merged
from .openai_models import model_card, openai_error, unknown_model
from .openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    RequestError,
    parse_request,
)
from .openai_tools import forced_call_schema
from .streaming import TurnResponse

if TYPE_CHECKING:
    from .original_api import HttpApi

__all__ = ["OpenAIApi"]


class OpenAIApi:
    """The OpenAI-compatible endpoints of one :class:`~.original_api.HttpApi`."""

    def __init__(self, http: HttpApi) -> None:
        self.http = http

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: the one served model."""
        context = await RequestContext.of(request, self.http.roles, create_session=False)
        if not context.allows("openai"):
            return openai_error(403, "forbidden on the role layer", "permission_error")
        return JSONResponse({"object": "list", "data": [model_card(self.http.service)]})

    async def model(self, request: Request) -> Response:
        """``GET /v1/models/{model}``: the served model's card, or a 404."""
        context = await RequestContext.of(request, self.http.roles, create_session=False)
        if not context.allows("openai"):
            return openai_error(403, "forbidden on the role layer", "permission_error")
        refusal = unknown_model(self.http.service, request.path_params["model"], lookup=True)
        return refusal or JSONResponse(model_card(self.http.service))

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, "completion")

    # ------------------------------------------------------------------ one request

    async def _serve(self, request: Request, route: Route) -> Response:
        cs = self.http.service
        if not cs.running:
            return openai_error(503, "the model is not loaded (yet, or any more)", "server_error")
        media_type = request.headers.get("content-type", "application/json").split(";")[0]
        if media_type.strip().lower() != "application/json":
            return openai_error(
                415,
                "the body must be JSON (Content-Type: application/json)",
                "invalid_request_error",
            )
        try:
            body = await read_json_object(request, None, self.http.options)
        except BadRequest as error:
            return openai_error(
                error.status, error.message, "invalid_request_error", code=error.error
            )
        context = await RequestContext.of(request, self.http.roles, create_session=False)
        if not context.allows("openai"):
            return openai_error(403, "forbidden on the role layer", "permission_error")
        refusal = unknown_model(cs, body.get("model"))
        if refusal is not None:
            return refusal
        names: Mapping[str, str] = {}
        try:
            plan = await (self._chat_plan(body) if route == "chat" else self._completion_plan(body))
            names = plan.names
            handles, timers = await self._submit(plan)
        except RequestError as error:
            return openai_error(
                400, error.message, "invalid_request_error", code=error.code, param=error.param
            )
        except (ConfigError, PromptTooLongError) as error:
            return _config_error(error, names)
        except RequestRejected as error:
            self.http.metrics.observe_rejected(str(error.reason))
            if error.reason is RejectReason.QUEUE_FULL:
                response = openai_error(
                    429, "too many requests; retry later", "rate_limit_exceeded"
                )
                response.headers["Retry-After"] = "1"
                return response
            message = f"not taking requests ({error.reason})"
            return openai_error(503, message, "server_error", headers={"Retry-After": "5"})
        answer = Answer(self.http.service, plan, len(handles))
        if plan.stream:
            events = merged(handles, timers)
            return TurnResponse(
                answer.chunks(events),
                media_type="text/event-stream; charset=utf-8",
                on_end=closer(handles, timers),
                feeders=events.feeders,
            )
        return WholeResponse(answer.whole(merged(handles, timers)), handles, timers)

    async def _submit(self, plan: Plan) -> tuple[list[RequestHandle], list[RequestTimer]]:
        """Every choice of every prompt, or none: a refusal closes those already in."""
        handles: list[RequestHandle] = []
        timers: list[RequestTimer] = []
        seed = plan.params.get("seed")
        try:
            for submit in plan.prompts:
                for choice in range(plan.n):
                    params = dict(plan.params)
                    if isinstance(seed, int) and choice:
                        params["seed"] = (seed + choice) % (MAX_SEED + 1)
                    timer = RequestTimer(self.http.metrics)
                    timer.submitted()
                    handles.append(await submit(params))
                    timers.append(timer)
        except BaseException:
            for handle, timer in zip(handles, timers, strict=False):
                handle.close()
                timer.finished("cancelled")
            raise
        return handles, timers

    # ------------------------------------------------------------------ request bodies

    async def _chat_plan(self, body: dict[str, Any]) -> Plan:
        parsed = parse_request(ChatCompletionRequest, body)
        cs = self.http.service
        params = self._sampling(parsed)
        max_field = "max_completion_tokens"
        if parsed.max_completion_tokens is not None:
            params["max_new_tokens"] = parsed.max_completion_tokens
        elif parsed.max_tokens is not None:
            params["max_new_tokens"] = parsed.max_tokens
            max_field = "max_tokens"
        if parsed.logprobs:
            params["logprobs"] = parsed.top_logprobs or 0
        tools = [tool.model_dump(exclude_none=True) for tool in parsed.tools or ()]
        choice = parsed.tool_choice or ("auto" if tools else "none")
        tool_mode: ToolMode = "none"
        grammar_field = "response_format"
        if tools and choice != "none":
            if choice == "auto":
                tool_mode = "auto"
            else:
                tool_mode = "forced"
                name = choice.function.name if isinstance(choice, NamedToolChoice) else None
                chosen = [t for t in tools if name in (None, t["function"]["name"])]
                schema = forced_call_schema(chosen, name)  # strict per function
                params["grammar"] = Grammar("json_schema", json.dumps(schema))
                grammar_field = "tools"
        format_ = parsed.response_format
        if isinstance(format_, JsonObjectFormat):
            params["grammar"] = Grammar("json_object")
        elif isinstance(format_, JsonSchemaFormat):
            schema = format_.json_schema.json_schema or {"type": "object"}
            strict = bool(format_.json_schema.strict)
            params["grammar"] = Grammar("json_schema", json.dumps(schema), strict=strict)
        messages = [m.model_dump(exclude_none=True) for m in parsed.messages]
        for message in messages:
            if isinstance(message.get("content"), list):  # text parts
                message["content"] = "".join(part["text"] for part in message["content"])
        rendered_tools = tools if choice != "none" else None

        async def submit(overrides: Mapping[str, object]) -> RequestHandle:
            return await cs.submit_messages(
                messages, generation_params=overrides, tools=rendered_tools
            )

        return Plan(
            route="chat",
            prompts=[submit],
            params=params,
            n=parsed.n or 1,
            stream=bool(parsed.stream),
            include_usage=bool(parsed.stream_options and parsed.stream_options.include_usage),
            tool_mode=tool_mode,
            tool_names=tuple(tool["function"]["name"] for tool in tools),
            names={
                "max_new_tokens": max_field,
                "logprobs": "top_logprobs",
                "grammar": grammar_field,
            },
        )

    async def _completion_plan(self, body: dict[str, Any]) -> Plan:
        parsed = parse_request(CompletionRequest, body)
        cs = self.http.service
        params = self._sampling(parsed)
        # OpenAI's default for this route.
        params["max_new_tokens"] = parsed.max_tokens if parsed.max_tokens is not None else 16
        if parsed.logprobs is not None:
            params["logprobs"] = parsed.logprobs
        prompts = _prompts(parsed.prompt)
        for index, one in enumerate(prompts):
            if not isinstance(one, str):
                cs.check_token_ids("prompt" if len(prompts) == 1 else f"prompt[{index}]", one)
        echo = []
        if parsed.echo:
            echo = [p if isinstance(p, str) else await cs.detokenize(p) for p in prompts]

        def submitter(one: str | list[int]) -> Callable[[Mapping[str, object]], Any]:
            async def submit(overrides: Mapping[str, object]) -> RequestHandle:
                return await cs.submit_prompt(one, generation_params=overrides)

            return submit

        return Plan(
            route="completion",
            prompts=[submitter(one) for one in prompts],
            params=params,
            n=parsed.n or 1,
            stream=bool(parsed.stream),
            include_usage=bool(parsed.stream_options and parsed.stream_options.include_usage),
            echo=echo,
            names={"max_new_tokens": "max_tokens"},
        )

    def _sampling(self, parsed: ChatCompletionRequest | CompletionRequest) -> dict[str, object]:
        """The generation options both routes share, as chatstream names them."""
        cs = self.http.service
        params: dict[str, object] = {
            name: value
            for name in (
                "temperature",
                "top_p",
                "seed",
                "presence_penalty",
                "frequency_penalty",
                "min_p",
                "repetition_penalty",
                "min_tokens",
                "ignore_eos",
            )
            if (value := getattr(parsed, name)) is not None
        }
        # OpenAI samples from the whole vocabulary unless told otherwise (-1: vLLM's "off").
        params["top_k"] = parsed.top_k if parsed.top_k not in (None, -1) else None
        if parsed.stop is not None:
            params["stop"] = [parsed.stop] if isinstance(parsed.stop, str) else parsed.stop
        if parsed.stop_token_ids:
            cs.check_token_ids("stop_token_ids", parsed.stop_token_ids)
            params["stop_token_ids"] = parsed.stop_token_ids
        if parsed.logit_bias:
            params["logit_bias"] = _logit_bias(parsed.logit_bias, cs.vocab_size)
        return params


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The prompts of a completions request: a text, texts, token ids or lists of them."""
    if isinstance(prompt, str):
        return [prompt]
    texts = [p for p in prompt if isinstance(p, str)]
    ids = [p for p in prompt if isinstance(p, int)]
    lists = [p for p in prompt if isinstance(p, list)]
    return [*texts] if texts else [ids] if ids else [*lists]


def _logit_bias(bias: Mapping[str, float], vocab_size: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not key.isdigit() or int(key) >= vocab_size:
            raise RequestError(
                f"logit_bias.{key}", f"Invalid value for 'logit_bias': {key!r} is not a token id."
            )
        out[int(key)] = value
    return out


def _config_error(error: ChatStreamErrorLike, names: Mapping[str, str]) -> JSONResponse:
    """A 400 for an option the core refused, in the client's words."""
    if isinstance(error, PromptTooLongError):
        return openai_error(
            400, str(error), "invalid_request_error", code="context_length_exceeded"
        )
    option = getattr(error, "option", None)
    param = names.get(str(option), str(option)) if option is not None else None
    message = str(error)
    if option is not None:
        detail = message.removeprefix(f"{option}: ")
        message = f"Invalid value for '{param}': {detail}."
        for ours, theirs in names.items():
            message = message.replace(ours, theirs)
    return openai_error(400, message, "invalid_request_error", code="invalid_value", param=param)


ChatStreamErrorLike = ConfigError | PromptTooLongError
