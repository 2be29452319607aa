"""An OpenAI-compatible API: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Stateless (the client sends the whole conversation), streamed as ``chat.completion.chunk``
Server-Sent Events ending in ``data: [DONE]``, or answered in one JSON object. Errors use
OpenAI's ``{"error": {...}}`` shape; a full queue is always a 429 here. The official
``openai`` Python client works against it unmodified.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from chatstream.adapters.driver import RequestEvent, RequestHandle
from chatstream.adapters.service import SHUTDOWN_ERROR
from chatstream.adapters.turn import RequestRejected
from chatstream.core import (
    ConfigError,
    Finished,
    FinishReason,
    PromptTooLongError,
    RejectReason,
    TextDelta,
)

from .common import BadRequest, RequestContext, read_json_object
from .metrics import RequestTimer
from .openai_models import model_card, unknown_model
from .streaming import TurnResponse

if TYPE_CHECKING:
    from .original_api import HttpApi

__all__ = ["OpenAIApi"]

# Fields of the OpenAI request that map onto chatstream's generation parameters.
_PARAMS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed"}


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


class OpenAIApi:
    """The OpenAI-compatible endpoints of one :class:`~.original_api.HttpApi`."""

    def __init__(self, http: HttpApi) -> None:
        self.http = http

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: the one served model."""
        context = await RequestContext.of(request, self.http.roles, create_session=False)
        if not context.allows("openai"):
            return _error(403, "forbidden on the role layer", "permission_error")
        return JSONResponse({"object": "list", "data": [model_card(self.http.service)]})

    async def model(self, request: Request) -> Response:
        """``GET /v1/models/{model}``: the served model's card, or a 404."""
        context = await RequestContext.of(request, self.http.roles, create_session=False)
        if not context.allows("openai"):
            return _error(403, "forbidden on the role layer", "permission_error")
        refusal = unknown_model(self.http.service, request.path_params["model"])
        return refusal or JSONResponse(model_card(self.http.service))

    async def chat_completions(self, request: Request) -> Response | TurnResponse:
        cs = self.http.service
        if not cs.running:
            return _error(503, "the model is not loaded (yet, or any more)", "server_error")
        try:
            body = await read_json_object(request, None, self.http.options)
        except BadRequest as error:
            return _error(error.status, error.message, "invalid_request_error", error.error)
        context = await RequestContext.of(request, self.http.roles, create_session=False)
        if not context.allows("openai"):
            return _error(403, "forbidden on the role layer", "permission_error")
        try:
            messages = _messages(body.get("messages"))
            params = _params(body)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise ConfigError("stream", "must be true or false")
            timer = RequestTimer(self.http.metrics)
            timer.submitted()
            handle = await cs.submit_messages(messages, generation_params=params)
        except (ConfigError, PromptTooLongError) as error:
            return _error(400, str(error), "invalid_request_error", _code(error))
        except RequestRejected as error:
            self.http.metrics.observe_rejected(str(error.reason))
            if error.reason is RejectReason.QUEUE_FULL:
                response = _error(429, "too many requests; retry later", "rate_limit_exceeded")
                response.headers["Retry-After"] = "1"
                return response
            response = _error(503, f"not taking requests ({error.reason})", "server_error")
            response.headers["Retry-After"] = "5"
            return response
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if stream:
            options = body.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            return TurnResponse(
                self._chunks(_Timed(handle, timer), completion_id, created, usage),
                media_type="text/event-stream; charset=utf-8",
                on_end=_closer(handle, timer),
            )
        return _WholeResponse(
            self._whole(_Timed(handle, timer), completion_id, created), handle, timer
        )

    async def _whole(self, handle: _Timed, completion_id: str, created: int) -> Response:
        text: list[str] = []
        finished: Finished | None = None
        async for event in handle:
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, Finished):
                finished = event
        if finished is not None and finished.error == SHUTDOWN_ERROR:
            response = _error(503, SHUTDOWN_ERROR, "server_error", "shutdown")
            response.headers["Retry-After"] = "5"
            return response
        if finished is None or finished.reason is FinishReason.ERROR:
            detail = finished.error if finished is not None else "the request was cancelled"
            return _error(500, f"generation failed: {detail}", "server_error")
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": self.http.service.model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(text)},
                        "finish_reason": _finish_reason(finished),
                    }
                ],
                "usage": _usage(finished),
            }
        )

    async def _chunks(
        self, handle: _Timed, completion_id: str, created: int, include_usage: bool
    ) -> AsyncIterator[bytes]:
        model = self.http.service.model_id

        def chunk(delta: Mapping[str, Any], finish: str | None, **extra: Any) -> bytes:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

        yield chunk({"role": "assistant", "content": ""}, None)
        async for event in handle:
            if isinstance(event, TextDelta):
                yield chunk({"content": event.text}, None)
            elif isinstance(event, Finished):
                if event.error == SHUTDOWN_ERROR:
                    error = {"message": SHUTDOWN_ERROR, "type": "server_error", "code": "shutdown"}
                    yield f"data: {json.dumps({'error': error})}\n\n".encode()
                elif event.reason is FinishReason.ERROR:
                    error = {"message": f"generation failed: {event.error}", "type": "server_error"}
                    yield f"data: {json.dumps({'error': error})}\n\n".encode()
                else:
                    yield chunk({}, _finish_reason(event))
                    if include_usage:
                        payload = {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": _usage(event),
                        }
                        yield f"data: {json.dumps(payload)}\n\n".encode()
        yield b"data: [DONE]\n\n"


class _Timed:
    """A request's events, feeding the metrics on the way."""

    def __init__(self, handle: RequestHandle, timer: RequestTimer) -> None:
        self.handle = handle
        self.timer = timer

    def __aiter__(self) -> _Timed:
        return self

    async def __anext__(self) -> RequestEvent:
        event = await self.handle.__anext__()
        self.timer.observe(event)
        return event


class _WholeResponse(Response):
    """A non-streamed completion that still notices the client leaving: the generation is
    cancelled and its slot freed, rather than finished for nobody."""

    def __init__(
        self, answer: Awaitable[Response], handle: RequestHandle, timer: RequestTimer
    ) -> None:
        self.answer = answer
        self.handle = handle
        self.timer = timer
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response | None = None
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                response = await self.answer
                tg.cancel_scope.cancel()
        finally:
            self.handle.close()
            # Ignored when the request already finished; else its tokens so far count.
            self.timer.finished(FinishReason.CANCELLED, self.handle.usage)
        if response is not None:
            await response(scope, receive, send)


def _closer(handle: RequestHandle, timer: RequestTimer) -> Any:
    async def close(how: str) -> None:
        handle.close()
        # Ignored when the request already finished; else its tokens so far count.
        timer.finished(FinishReason.CANCELLED, handle.usage)

    return close


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ConfigError("messages", "must be a non-empty list")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise ConfigError(f"messages[{index}]", "must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ConfigError(f"messages[{index}].role", f"unsupported role {role!r}")
        if isinstance(content, list):  # content parts: only text is supported
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if not all(isinstance(p, str) for p in parts) or len(parts) != len(content):
                raise ConfigError(f"messages[{index}].content", "only text parts are supported")
            content = "".join(str(p) for p in parts)
        if not isinstance(content, str):
            raise ConfigError(f"messages[{index}].content", "must be a string")
        messages.append({"role": str(role), "content": content})
    return messages


def _params(body: Mapping[str, Any]) -> dict[str, object]:
    n = body.get("n", 1)
    if n != 1:
        raise ConfigError("n", "only n=1 is supported")
    params: dict[str, object] = {
        ours: body[theirs] for theirs, ours in _PARAMS.items() if body.get(theirs) is not None
    }
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        params["max_new_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        params["stop"] = [stop] if isinstance(stop, str) else stop
    # OpenAI samples from the whole vocabulary unless told otherwise.
    params["top_k"] = None
    return params


def _finish_reason(finished: Finished) -> str:
    return "length" if finished.reason is FinishReason.LENGTH else "stop"


def _usage(finished: Finished) -> dict[str, Any]:
    usage = finished.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        # Prompt tokens whose KV was already held (prefix reuse), as OpenAI reports them.
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _code(error: Exception) -> str:
    return "context_length_exceeded" if isinstance(error, PromptTooLongError) else "invalid_value"
