"""The served model of the OpenAI-compatible API: its card, and the check of the ``model``
that a request names.

``GET /v1/models`` lists one card and ``GET /v1/models/{id}`` returns it; both say the
service's ``model_id`` (``ChatStream(served_model_name=...)``, else the model's own name).
Every handler of a request with a ``model`` field checks it first. Where the operator named the
served model (``served_model_name``), as vLLM does: absent or empty means the served model,
another name is a 404 ``The model `x` does not exist.``. Where not, any name is taken, as
llama.cpp's server does: clients that hardcode a model name work unchanged::

    refusal = unknown_model(service, body.get("model"))
    if refusal is not None:
        return refusal
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from chatstream.adapters.service import ChatService

__all__ = ["model_card", "openai_error", "unknown_model"]

#: The longest model name echoed back in an error message.
_ECHOED_NAME_CHARS = 200


def openai_error(
    status: int,
    message: str,
    kind: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def model_card(service: ChatService) -> dict[str, Any]:
    """The served model as ``/v1/models`` lists it (with ``max_model_len`` once it runs)."""
    card: dict[str, Any] = {
        "id": service.model_id,
        "object": "model",
        "created": 0,
        "owned_by": "chatstream",
    }
    if service.running:
        card["max_model_len"] = service.max_model_len
    return card


def unknown_model(
    service: ChatService, requested: object, *, lookup: bool = False
) -> JSONResponse | None:
    """None when ``requested`` (a request's ``model`` field) is absent, empty or the served
    model's name, or any name when the service has no ``served_model_name`` (and this is not
    a ``lookup`` of a model card); else the answer to give: a 404 ``model_not_found`` naming
    it, or a 400 when it is no string."""
    if requested is None or requested == "" or requested == service.model_id:
        return None
    if not isinstance(requested, str):
        message = "'model' must be a string"
        return openai_error(
            400, message, "invalid_request_error", code="invalid_value", param="model"
        )
    if service.served_model_name is None and not lookup:
        return None
    shown = requested[:_ECHOED_NAME_CHARS]
    return openai_error(
        404,
        f"The model `{shown}` does not exist.",
        "invalid_request_error",
        code="model_not_found",
        param="model",
    )
