"""The app the web UI tests serve in a real server process.

Like ``tests.http.apps.mock_app``, configured by ``CHATSTREAM_TEST_OPTIONS`` (JSON keyword
arguments for ``ChatStream``, mock mode) and ``CHATSTREAM_TEST_HTTP`` (``HttpOptions``), plus
``CHATSTREAM_TEST_WEB_UI``: the JSON init params of the page (``web_ui_params``: ``lang``,
``title``), which the server writes in place of ``const opts = {}``.
"""

from __future__ import annotations

import json
import os

from starlette.applications import Starlette

from chatstream import ChatStream
from chatstream.adapters.starlette import create_app
from tests.http.apps import _http_options


def web_app() -> Starlette:
    """Every API and the web UI, with the page's init params from the environment."""
    options = {
        "use_mock_response": True,
        "mock_params": {"type": "round", "time_per_token_sec": 0.05},
        **json.loads(os.environ.get("CHATSTREAM_TEST_OPTIONS", "{}")),
    }
    web_ui_params = json.loads(os.environ.get("CHATSTREAM_TEST_WEB_UI", "{}"))
    return create_app(
        ChatStream(**options),
        apis={"all": True, "web_ui_params": web_ui_params},
        secret_key="test secret",
        http_options=_http_options(),
    )
