"""Starlette and FastAPI integration, at its documented path: a re-export of
:mod:`chatstream.adapters.http.app` (the app factory and routes), of ``HttpOptions`` and of
the API-key middleware.

    from chatstream import ChatStream
    from chatstream.adapters.starlette import create_app

    app = create_app(ChatStream(use_mock_response=True), secret_key="change me")
"""

from __future__ import annotations

from .http.app import (
    API_PATHS,
    append_apis,
    append_middlewares,
    cors_middleware,
    create_app,
    mountable_app,
    routes,
    select_apis,
    session_middleware,
)
from .http.auth import ApiKeyMiddleware
from .http.common import HttpOptions

__all__ = [
    "API_PATHS",
    "ApiKeyMiddleware",
    "HttpOptions",
    "append_apis",
    "append_middlewares",
    "cors_middleware",
    "create_app",
    "mountable_app",
    "routes",
    "select_apis",
    "session_middleware",
]
