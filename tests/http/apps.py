"""Apps the HTTP tests serve in a real server process, configured by environment variables.

``CHATSTREAM_TEST_OPTIONS`` holds JSON keyword arguments for ``ChatStream`` (mock mode);
``CHATSTREAM_TEST_HTTP`` holds JSON keyword arguments for ``HttpOptions``;
``CHATSTREAM_TEST_APP`` holds more JSON keyword arguments for ``create_app``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chatstream import ChatStream
from chatstream.adapters.http.common import HttpOptions
from chatstream.adapters.starlette import create_app


def _chat_stream() -> ChatStream:
    options: dict[str, Any] = {
        "use_mock_response": True,
        "mock_params": {"type": "round", "time_per_token_sec": 0.0},
        **json.loads(os.environ.get("CHATSTREAM_TEST_OPTIONS", "{}")),
    }
    return ChatStream(**options)


def _http_options() -> HttpOptions:
    return HttpOptions(**json.loads(os.environ.get("CHATSTREAM_TEST_HTTP", "{}")))


def tiny_model_app() -> Starlette:
    """Every API on the tiny random model saved in ``CHATSTREAM_TEST_MODEL_DIR``."""
    import pathlib

    import torch

    from tests.tiny_model import load_tiny_model

    torch.set_num_threads(1)
    model, tokenizer = load_tiny_model(pathlib.Path(os.environ["CHATSTREAM_TEST_MODEL_DIR"]))
    options = json.loads(os.environ.get("CHATSTREAM_TEST_OPTIONS", "{}"))
    chat_stream = ChatStream(model=model, tokenizer=tokenizer, **options)
    return create_app(chat_stream, secret_key="test secret", http_options=_http_options())


def mock_app() -> Starlette:
    """The app factory's app: every API, sessions, health, metrics."""
    return create_app(
        _chat_stream(),
        secret_key="test secret",
        http_options=_http_options(),
        **json.loads(os.environ.get("CHATSTREAM_TEST_APP", "{}")),
    )


def redis_app() -> Starlette:
    """:func:`mock_app` with its sessions in Redis: ``CHATSTREAM_TEST_APP`` holds
    ``redis_url`` and optional ``redis_options`` (keyword arguments of ``RedisStore``)."""
    from chatstream.adapters.http.redis_store import RedisStore

    app_options = json.loads(os.environ.get("CHATSTREAM_TEST_APP", "{}"))
    store = RedisStore(app_options.pop("redis_url"), **app_options.pop("redis_options", {}))
    return create_app(
        _chat_stream(),
        secret_key="test secret",
        http_options=_http_options(),
        store=store,
        **app_options,
    )


def original_style_app() -> Starlette:
    """An app written the way the original's docs wrote them: hand-made routes calling the
    ``handle_*`` methods, request-body interception and a finish callback; its sessions in
    Redis when ``CHATSTREAM_TEST_APP`` holds a ``redis_url``."""
    import contextlib

    from chatstream.adapters.http.redis_store import RedisStore

    redis_url = json.loads(os.environ.get("CHATSTREAM_TEST_APP", "{}")).get("redis_url")
    sessions: dict[str, Any] = {"secret_key": "test secret"}
    if redis_url:
        sessions["store"] = RedisStore(redis_url)

    chat_stream = _chat_stream()
    finished: list[str] = []

    async def stream_api(request: Request) -> Any:
        body = await request.body()  # the original's "interception"
        return await chat_stream.handle_chat_stream_request(
            request, request_body=body, callback=lambda req, message: finished.append(message)
        )

    async def callbacks(request: Request) -> Response:
        return JSONResponse(finished)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        async with chat_stream:
            yield

    app = Starlette(
        routes=[
            Route("/chat_stream", stream_api, methods=["POST"]),
            Route("/callbacks", callbacks, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    chat_stream.append_middlewares(app, {"fast_session": sessions})
    chat_stream.append_apis(app, {"exclude": ["chat_stream"]})
    app.state.chat_stream = chat_stream
    return app
