"""vLLM's operational routes: ``POST /tokenize``, ``POST /detokenize`` and ``GET /version``.

They come with the OpenAI-compatible API (API name ``openai``) and answer in its error
shape. Bodies are read within ``HttpOptions.max_body_bytes``; tokenizing and decoding run in
a worker thread, never on the event loop.

``/tokenize`` takes ``{"prompt": "text"}`` or ``{"messages": [...]}`` (rendered as a chat
completion renders them, with ``add_generation_prompt``, true by default), and
``add_special_tokens``; it answers ``{"tokens": [...], "count": n, "max_model_len": n}``.
``/detokenize`` takes ``{"tokens": [...]}`` and answers ``{"prompt": "text"}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream.core import ConfigError
from chatstream.core.version import VERSION

from .common import BadRequest, RequestContext, read_json_object
from .openai_models import openai_error, unknown_model

if TYPE_CHECKING:
    from .original_api import HttpApi

__all__ = ["OperationsApi"]

_ROLES = ("system", "user", "assistant")


class _Invalid(Exception):
    """A field of the request is wrong: a 400 naming it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class OperationsApi:
    """``/tokenize``, ``/detokenize`` and ``/version`` of one :class:`~.original_api.HttpApi`."""

    def __init__(self, http: HttpApi) -> None:
        self.http = http

    async def version(self, request: Request) -> Response:
        """``GET /version``: chatstream's version."""
        refusal = await self._refusal(request)
        return refusal or JSONResponse({"version": VERSION})

    async def tokenize(self, request: Request) -> Response:
        """``POST /tokenize``: the token ids of a prompt or of chat messages."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            prompt = _prompt_or_messages(body)
            add_special_tokens = _optional_bool(body, "add_special_tokens")
            add_generation_prompt = _optional_bool(body, "add_generation_prompt")
            tokens = await self.http.service.tokenize(
                prompt,
                add_special_tokens=add_special_tokens,
                add_generation_prompt=add_generation_prompt is not False,
            )
        except _Invalid as error:
            return _invalid(error.param, error.message)
        except ConfigError as error:
            return _invalid(error.option.split("[", 1)[0], str(error))
        service = self.http.service
        return JSONResponse(
            {"tokens": tokens, "count": len(tokens), "max_model_len": service.max_model_len}
        )

    async def detokenize(self, request: Request) -> Response:
        """``POST /detokenize``: the text of token ids."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            text = await self.http.service.detokenize(_token_ids(body.get("tokens")))
        except _Invalid as error:
            return _invalid(error.param, error.message)
        except ConfigError as error:
            return _invalid("tokens", str(error))
        return JSONResponse({"prompt": text})

    async def _refusal(self, request: Request) -> Response | None:
        """The 403 for a role that does not allow ``openai``, else None."""
        context = await RequestContext.of(request, self.http.roles, create_session=False)
        if context.allows("openai"):
            return None
        return openai_error(403, "forbidden on the role layer", "permission_error")

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        """The request's JSON object, or the answer that refuses the request."""
        if not self.http.service.running:
            headers = {"Retry-After": "5"}
            message = "the model is not loaded (yet, or any more)"
            return openai_error(503, message, "server_error", headers=headers)
        try:
            body = await read_json_object(request, None, self.http.options)
        except BadRequest as error:
            return openai_error(
                error.status, error.message, "invalid_request_error", code=error.error
            )
        refusal = await self._refusal(request)
        return refusal or unknown_model(self.http.service, body.get("model")) or body


def _invalid(param: str, message: str) -> Response:
    return openai_error(400, message, "invalid_request_error", code="invalid_value", param=param)


def _optional_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _Invalid(name, f"'{name}' must be true or false")
    return value


def _prompt_or_messages(body: dict[str, Any]) -> str | list[dict[str, str]]:
    """The text of ``prompt``, or the checked ``messages``: exactly one of them."""
    if ("prompt" in body) == ("messages" in body):
        raise _Invalid("prompt", "give either 'prompt' (a string) or 'messages' (a list)")
    if "prompt" in body:
        if not isinstance(body["prompt"], str):
            raise _Invalid("prompt", "'prompt' must be a string")
        return str(body["prompt"])
    return _messages(body["messages"])


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _Invalid("messages", "'messages' must be a non-empty list")
    return [_message(index, message) for index, message in enumerate(value)]


def _message(index: int, message: object) -> dict[str, str]:
    if not isinstance(message, dict):
        raise _Invalid("messages", f"messages[{index}] must be an object")
    role, content = message.get("role"), message.get("content")
    if role not in _ROLES:
        raise _Invalid("messages", f"messages[{index}].role must be one of {list(_ROLES)}")
    if isinstance(content, list):  # content parts: text only
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            raise _Invalid("messages", f"messages[{index}].content: only text parts are taken")
        content = "".join(str(text) for text in texts)
    if not isinstance(content, str):
        raise _Invalid("messages", f"messages[{index}].content must be a string")
    return {"role": str(role), "content": content}


def _token_ids(value: object) -> list[int]:
    if not isinstance(value, list):
        raise _Invalid("tokens", "'tokens' must be a list of token ids")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise _Invalid("tokens", "'tokens' must hold integers only")
    return list(value)
