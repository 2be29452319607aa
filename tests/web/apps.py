"""The apps the web UI tests serve in a real server process.

Like ``tests.http.apps.mock_app``, configured by ``CHATSTREAM_TEST_OPTIONS`` (JSON keyword
arguments for ``ChatStream``, mock mode) and ``CHATSTREAM_TEST_HTTP`` (``HttpOptions``), plus
``CHATSTREAM_TEST_WEB_UI``: the JSON init params of the page (``web_ui_params``: ``lang``,
``title``), which the server writes in place of ``const opts = {}``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Mount

from chatstream import ChatStream
from chatstream.adapters.http.common import HttpOptions
from chatstream.adapters.starlette import create_app

#: Where :func:`mounted_app` mounts the chat app.
PREFIX = "/chat"


def web_app() -> Starlette:
    """Every API and the web UI, with the page's init params from the environment."""
    options = {
        "use_mock_response": True,
        "mock_params": {"type": "round", "time_per_token_sec": 0.05},
        **json.loads(os.environ.get("CHATSTREAM_TEST_OPTIONS", "{}")),
    }
    return create_app(
        ChatStream(**options),
        apis={
            "all": True,
            "web_ui_params": json.loads(os.environ.get("CHATSTREAM_TEST_WEB_UI", "{}")),
        },
        secret_key="test secret",
        http_options=HttpOptions(**json.loads(os.environ.get("CHATSTREAM_TEST_HTTP", "{}"))),
    )


def mounted_app() -> Starlette:
    """:func:`web_app` mounted under :data:`PREFIX` of another app, as a site would."""
    inner = web_app()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A mounted app's lifespan does not run by itself: the outer app runs it.
        async with inner.router.lifespan_context(inner):
            yield

    outer = Starlette(routes=[Mount(PREFIX, app=inner)], lifespan=lifespan)
    outer.state.chat_stream = inner.state.chat_stream
    return outer
