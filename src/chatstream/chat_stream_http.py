"""The HTTP side of ``ChatStream``: the original's ``append_apis`` / ``append_middlewares`` and
``handle_*_request`` methods, and the web UI pages.

Each method hands the ChatStream, as a :class:`~chatstream.adapters.service.ChatService`, to
:mod:`chatstream.adapters.http`; nothing there imports the facade. Starlette is imported only
when one of these is used, so a ChatStream without the ``server`` extra still chats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapters.http.common import HttpOptions
    from .adapters.http.openai_api import OpenAIApi
    from .adapters.http.original_api import HttpApi
    from .adapters.service import ChatService

__all__ = ["HttpMethods"]


class HttpMethods:
    """Mixed into :class:`~chatstream.ChatStream` (which is a ``ChatService``)."""

    def configure_http(self: ChatService, *, options: HttpOptions | None = None) -> None:
        """Set the HTTP limits (body size, input length, keep-alive, drain timeout)."""
        from .adapters.http.original_api import configure_http

        configure_http(self, options)

    def http_api(self: ChatService) -> HttpApi:
        """The HTTP endpoints of this ChatStream (made on first use, then shared)."""
        from .adapters.http.original_api import http_api_of

        return http_api_of(self)

    def openai_api(self: ChatService) -> OpenAIApi:
        from .adapters.http.openai_api import OpenAIApi
        from .adapters.http.original_api import http_api_of

        return OpenAIApi(http_api_of(self))

    def routes(
        self: ChatService,
        opts: Mapping[str, Any] | None = None,
        *,
        open_metrics: bool = False,
        metrics_token: str | None = None,
    ) -> list[Any]:
        """Routes for ``Starlette(routes=...)`` or ``Mount`` (all APIs by default);
        ``open_metrics`` and ``metrics_token`` as for ``create_app``."""
        from .adapters.http.app import routes

        return routes(self, opts, open_metrics=open_metrics, metrics_token=metrics_token)

    def append_apis(self: ChatService, app: Any, opts: Mapping[str, Any] | None = None) -> None:
        """Register the built-in routes on a Starlette/FastAPI app, as the original did:
        ``{"all": True}``, ``{"include": [...]}`` or ``{"exclude": [...]}``."""
        from .adapters.http.app import append_apis

        append_apis(app, self, opts)

    def append_middlewares(self, app: Any, opts: Mapping[str, Any] | None = None) -> None:
        """Add the session middleware (and CORS with ``develop_mode``) to an app."""
        from .adapters.http.app import append_middlewares

        append_middlewares(app, opts)

    async def handle_chat_stream_request(
        self: ChatService,
        request: Any,
        request_body: bytes | str | None = None,
        callback: Any = None,
    ) -> Any:
        return await _api(self).handle_chat_stream_request(request, request_body, callback)

    async def handle_clear_context_request(self: ChatService, request: Any) -> Any:
        return await _api(self).handle_clear_context_request(request)

    async def handle_get_prompt_request(self: ChatService, request: Any) -> Any:
        return await _api(self).handle_get_prompt_request(request)

    async def handle_set_generation_params_request(self: ChatService, request: Any) -> Any:
        return await _api(self).handle_set_generation_params_request(request)

    async def handle_get_generation_params_request(self: ChatService, request: Any) -> Any:
        return await _api(self).handle_get_generation_params_request(request)

    async def handle_set_feedback_request(
        self: ChatService, request: Any, opts: Mapping[str, Any] | None = None
    ) -> Any:
        return await _api(self).handle_set_feedback_request(request, opts)

    async def handle_get_load_request(self: ChatService, request: Any) -> Any:
        return await _api(self).handle_get_load_request(request)

    async def handle_get_resource_usage_request(self: ChatService, request: Any) -> Any:
        return await _api(self).handle_get_resource_usage_request(request)

    async def index(
        self: ChatService,
        request: Any,
        response: Any = None,
        opts: Mapping[str, Any] | None = None,
    ) -> Any:
        """The web UI page (``response`` is accepted for the original's signature)."""
        from .adapters.http.web_ui import index_page

        return await index_page(request, self.roles, (opts or {}).get("ui_init_params"))

    async def js(self: ChatService, request: Any, response: Any = None) -> Any:
        """The web UI script."""
        from .adapters.http.web_ui import script

        return await script(request, self.roles)

    async def vendor(self: ChatService, request: Any, response: Any = None) -> Any:
        """A vendored library of the web UI, for a hand-written ``/vendor/{name}`` route."""
        from .adapters.http.web_ui import vendor

        return await vendor(request, self.roles)


def _api(service: ChatService) -> HttpApi:
    from .adapters.http.original_api import http_api_of

    return http_api_of(service)
