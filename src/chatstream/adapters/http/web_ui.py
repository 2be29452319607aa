"""The bundled web UI: its page (with the init params in place) and its script, behind the
role layer like every other API. The files live in :mod:`chatstream.web`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from chatstream.core.roles import ClientRoles

from .common import RequestContext, forbidden

__all__ = ["index_page", "index_response", "js_response", "script", "web_file"]


def web_file(name: str) -> bytes:
    return resources.files("chatstream.web").joinpath(name).read_bytes()


def index_response(ui_init_params: Mapping[str, Any] | None) -> Response:
    """The web UI page, with the init params in place of ``const opts = {}``."""
    page = web_file("index.html").decode()
    if ui_init_params:
        # </script> inside a JSON string must not end the script element.
        encoded = json.dumps(dict(ui_init_params)).replace("</", "<\\/")
        page = page.replace("const opts = {}", f"const opts = {encoded}", 1)
    return HTMLResponse(page, headers={"cache-control": "no-cache"})


def js_response() -> Response:
    return Response(
        web_file("chatstream.js"),
        media_type="text/javascript; charset=utf-8",
        headers={"cache-control": "no-cache"},
    )


async def index_page(
    request: Request, roles: ClientRoles, ui_init_params: Mapping[str, Any] | None
) -> Response:
    """``GET /``: the page, for callers whose role allows ``webui_index``."""
    context = await RequestContext.of(request, roles, create_session=False)
    if not context.allows("webui_index"):
        return forbidden()
    return index_response(ui_init_params)


async def script(request: Request, roles: ClientRoles) -> Response:
    """``GET /chatstream.js``: the script, for callers whose role allows ``webui_js``."""
    context = await RequestContext.of(request, roles, create_session=False)
    if not context.allows("webui_js"):
        return forbidden()
    return js_response()
