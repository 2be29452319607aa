"""Starlette and FastAPI integration, at its documented path: a re-export of
:mod:`chatstream.adapters.http.app` (the app factory and routes) and of ``HttpOptions``.

    from chatstream import ChatStream
    from chatstream.adapters.starlette import create_app

    app = create_app(ChatStream(use_mock_response=True), secret_key="change me")
"""

from __future__ import annotations

from .http.app import (
    API_PATHS,
    append_apis,
    append_middlewares,
    create_app,
    mountable_app,
    routes,
    select_apis,
    session_middleware,
)
from .http.common import HttpOptions

__all__ = [
    "API_PATHS",
    "HttpOptions",
    "append_apis",
    "append_middlewares",
    "create_app",
    "mountable_app",
    "routes",
    "select_apis",
    "session_middleware",
]
