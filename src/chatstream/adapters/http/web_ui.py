"""The bundled web UI: its page (with the init params in place), its script and the vendored
libraries it loads (``vendor/``), behind the role layer like every other API. The files live in
:mod:`chatstream.web`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from chatstream.core.roles import ClientRoles

from .common import RequestContext, forbidden

__all__ = [
    "VENDOR",
    "index_page",
    "index_response",
    "js_response",
    "script",
    "vendor",
    "vendor_response",
    "web_file",
]

_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"

#: The vendored files the page may load, by the name in their URL (``vendor/<name>``, which
#: carries the library's version): their path under ``chatstream/web/vendor`` and media type.
#: Nothing else is served from there. See ``chatstream/web/vendor/README.md``.
VENDOR: dict[str, tuple[str, str]] = {
    "marked-18.3.0.umd.js": ("marked/marked.umd.js", _JS),
    "purify-3.5.0.min.js": ("dompurify/purify.min.js", _JS),
    "highlight-11.12.0.min.js": ("highlightjs/highlight.min.js", _JS),
    "highlight-github-11.12.0.min.css": ("highlightjs/github.min.css", _CSS),
    "highlight-github-dark-11.12.0.min.css": ("highlightjs/github-dark.min.css", _CSS),
}


def web_file(name: str) -> bytes:
    """A file of :mod:`chatstream.web` by its relative path (``/``-separated)."""
    return resources.files("chatstream.web").joinpath(*name.split("/")).read_bytes()


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
        media_type=_JS,
        headers={"cache-control": "no-cache"},
    )


def vendor_response(name: str) -> Response:
    """A vendored file by its URL name, or a 404 for any name not in :data:`VENDOR`. The name
    carries the version, so the file may be cached for good."""
    entry = VENDOR.get(name)
    if entry is None:
        return Response("Not Found", status_code=404, media_type="text/plain")
    path, media_type = entry
    return Response(
        web_file(f"vendor/{path}"),
        media_type=media_type,
        headers={"cache-control": "public, max-age=31536000, immutable"},
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


async def vendor(request: Request, roles: ClientRoles) -> Response:
    """``GET /vendor/{name}``: a vendored library of the page, for callers whose role allows
    ``webui_js`` (the page's scripts and styles go together)."""
    context = await RequestContext.of(request, roles, create_session=False)
    if not context.allows("webui_js"):
        return forbidden()
    return vendor_response(str(request.path_params.get("name", "")))
