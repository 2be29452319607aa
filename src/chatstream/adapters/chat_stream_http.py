"""The HTTP side of ``ChatStream``: the original's ``append_apis`` / ``append_middlewares`` and
``handle_*_request`` methods, and the web UI pages. Starlette is imported only when used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatstream.core.roles import ClientRoles

    from .chat_stream import ChatStream
    from .http_api import HttpApi
    from .http_common import HttpOptions
    from .openai_api import OpenAIApi

__all__ = ["HttpMethods"]


class HttpMethods:
    """Mixed into :class:`~chatstream.adapters.chat_stream.ChatStream`."""

    roles: ClientRoles
    _http: HttpApi | None
    _http_options: HttpOptions | None

    def configure_http(self, *, options: HttpOptions | None = None) -> None:
        """Set the HTTP limits (body size, input length, keep-alive, drain timeout)."""
        self._http_options = options
        self._http = None

    def http_api(self) -> HttpApi:
        """The HTTP endpoints of this ChatStream (built on first use)."""
        if self._http is None:
            from .http_api import HttpApi

            self._http = HttpApi(self._self(), roles=self.roles, options=self._http_options)
        return self._http

    def openai_api(self) -> OpenAIApi:
        from .openai_api import OpenAIApi

        return OpenAIApi(self.http_api())

    def routes(self, opts: Mapping[str, Any] | None = None) -> list[Any]:
        """Routes for ``Starlette(routes=...)`` or ``Mount`` (all APIs by default)."""
        from .starlette import routes

        return routes(self._self(), opts)

    def append_apis(self, app: Any, opts: Mapping[str, Any] | None = None) -> None:
        """Register the built-in routes on a Starlette/FastAPI app, as the original did:
        ``{"all": True}``, ``{"include": [...]}`` or ``{"exclude": [...]}``."""
        from .starlette import append_apis

        append_apis(app, self._self(), opts)

    def append_middlewares(self, app: Any, opts: Mapping[str, Any] | None = None) -> None:
        """Add the session middleware (and CORS with ``develop_mode``) to an app."""
        from .starlette import append_middlewares

        append_middlewares(app, opts)

    async def handle_chat_stream_request(
        self, request: Any, request_body: bytes | str | None = None, callback: Any = None
    ) -> Any:
        return await self.http_api().handle_chat_stream_request(request, request_body, callback)

    async def handle_clear_context_request(self, request: Any) -> Any:
        return await self.http_api().handle_clear_context_request(request)

    async def handle_get_prompt_request(self, request: Any) -> Any:
        return await self.http_api().handle_get_prompt_request(request)

    async def handle_set_generation_params_request(self, request: Any) -> Any:
        return await self.http_api().handle_set_generation_params_request(request)

    async def handle_get_generation_params_request(self, request: Any) -> Any:
        return await self.http_api().handle_get_generation_params_request(request)

    async def handle_set_feedback_request(
        self, request: Any, opts: Mapping[str, Any] | None = None
    ) -> Any:
        return await self.http_api().handle_set_feedback_request(request, opts)

    async def handle_get_load_request(self, request: Any) -> Any:
        return await self.http_api().handle_get_load_request(request)

    async def handle_get_resource_usage_request(self, request: Any) -> Any:
        return await self.http_api().handle_get_resource_usage_request(request)

    async def index(
        self, request: Any, response: Any = None, opts: Mapping[str, Any] | None = None
    ) -> Any:
        """The web UI page (``response`` is accepted for the original's signature)."""
        from .http_common import RequestContext, forbidden
        from .starlette import index_response

        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("webui_index"):
            return forbidden()
        return index_response((opts or {}).get("ui_init_params"))

    async def js(self, request: Any, response: Any = None) -> Any:
        """The web UI script."""
        from .http_common import RequestContext, forbidden
        from .starlette import js_response

        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("webui_js"):
            return forbidden()
        return js_response()

    def _self(self) -> ChatStream:
        from .chat_stream import ChatStream

        assert isinstance(self, ChatStream)
        return self
