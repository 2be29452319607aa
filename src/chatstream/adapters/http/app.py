"""The Starlette (and FastAPI) app: the app factory, mountable routes, and the original's
``append_apis`` / ``append_middlewares``.

    from chatstream import ChatStream
    from chatstream.adapters.starlette import create_app   # re-exports this module

    app = create_app(ChatStream(use_mock_response=True), secret_key="change me")

``create_app`` owns the service's life in the app's lifespan: the model loads at startup,
and at shutdown the server drains (new requests get 503, running streams get
``drain_timeout_sec`` to finish) before the rest is cancelled. Everything here takes a
:class:`~chatstream.adapters.service.ChatService`, never the facade itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from chatstream.adapters.service import ChatService
from chatstream.core import ConfigError

from .auth import ApiKeyMiddleware, guarded_by_token
from .common import HttpOptions
from .conversation_routes import ConversationsApi
from .openai_api import OpenAIApi
from .operations import OperationsApi
from .original_api import HttpApi, configure_http, http_api_of
from .rate_limit import RateLimitMiddleware
from .request_body import RequestBodyGuard
from .session_stores import SessionStore
from .sessions import SessionMiddleware
from .web_ui import index_page, script, vendor

__all__ = [
    "API_PATHS",
    "append_apis",
    "append_middlewares",
    "cors_middleware",
    "create_app",
    "mountable_app",
    "routes",
]

#: The original's API names, with their paths and methods, plus ours.
API_PATHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chat_stream": ("/chat_stream", ("POST", "GET")),
    "clear_context": ("/clear_context", ("POST",)),
    "get_prompt": ("/get_prompt", ("GET",)),
    "set_generation_params": ("/set_generation_params", ("POST",)),
    "get_generation_params": ("/get_generation_params", ("GET",)),
    "set_feedback": ("/set_feedback", ("POST",)),
    "get_load": ("/get_load", ("GET",)),
    "get_resource_usage": ("/get_resource_usage", ("GET",)),
    "webui_index": ("/", ("GET",)),
    "webui_js": ("/chatstream.js", ("GET",)),
    "openai": ("/v1/chat/completions", ("POST",)),
    "metrics": ("/metrics", ("GET",)),
    "get_history": ("/get_history", ("GET",)),
    "conversations": ("/conversations", ("GET", "POST")),
}


def select_apis(opts: Mapping[str, Any] | None) -> list[str]:
    """The API names chosen by the original's options: exactly one of ``{"all": True}``,
    ``{"include": [...]}`` or ``{"exclude": [...]}``; None means all.

    Raises:
        ValueError: none or several of them, or an unknown API name.
    """
    if opts is None:
        return list(API_PATHS)
    # "web_ui_params" may ride along with the selection, as in the original.
    chosen = [key for key in ("all", "include", "exclude") if key in opts]
    if len(chosen) != 1:
        raise ValueError("give exactly one of 'all', 'include' or 'exclude'")
    if chosen == ["all"]:
        if opts["all"] is not True:
            raise ValueError("'all' must be True")
        return list(API_PATHS)
    names = opts[chosen[0]]
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"'{chosen[0]}' must be a list of API names")
    unknown = [n for n in names if n not in API_PATHS]
    if unknown:
        raise ValueError(f"unknown API names {unknown}; known: {sorted(API_PATHS)}")
    if chosen == ["include"]:
        return [n for n in API_PATHS if n in names]
    return [n for n in API_PATHS if n not in names]


def routes(
    chat_stream: ChatService,
    opts: Mapping[str, Any] | None = None,
    *,
    open_metrics: bool = False,
    metrics_token: str | None = None,
) -> list[BaseRoute]:
    """The routes of the chosen APIs (all by default), plus ``/health`` and ``/load``; with
    ``webui_js`` ``/vendor/{name}`` (the page's libraries); with the
    ``openai`` API ``/v1/models``, ``/v1/models/{model}``, ``/tokenize``, ``/detokenize`` and
    ``/version``, ready for ``Starlette(routes=...)`` or ``Mount``.

    Args:
        open_metrics: ``/metrics`` answers everyone, as vLLM's does; by default the
            caller's role decides (API name ``metrics``).
        metrics_token: ``/metrics`` answers only ``Authorization: Bearer <metrics_token>``
            (whatever the role, or ``open_metrics``).
    """
    http = http_api_of(chat_stream)
    openai = OpenAIApi(http)
    conversations = ConversationsApi(http)
    web_ui_params = dict((opts or {}).get("web_ui_params") or {})
    handlers: dict[str, Callable[[Request], Any]] = {
        "chat_stream": lambda request: (
            http.handle_chat_stream_resume_request(request)
            if request.method in ("GET", "HEAD")
            else http.handle_chat_stream_request(request)
        ),
        "clear_context": http.handle_clear_context_request,
        "get_prompt": http.handle_get_prompt_request,
        "set_generation_params": http.handle_set_generation_params_request,
        "get_generation_params": http.handle_get_generation_params_request,
        "set_feedback": http.handle_set_feedback_request,
        "get_load": http.handle_get_load_request,
        "get_resource_usage": http.handle_get_resource_usage_request,
        "webui_index": lambda request: index_page(request, http.roles, web_ui_params),
        "webui_js": lambda request: script(request, http.roles),
        "openai": openai.chat_completions,
        "metrics": _metrics_handler(http, open_metrics, metrics_token),
        "get_history": http.handle_get_history_request,
        "conversations": lambda request: (
            conversations.list(request)
            if request.method in ("GET", "HEAD")
            else conversations.create(request)
        ),
    }
    selected = select_apis(opts)
    out: list[BaseRoute] = [
        Route(API_PATHS[name][0], _endpoint(handlers[name]), methods=list(API_PATHS[name][1]))
        for name in selected
    ]
    if "chat_stream" in selected:
        stop = _endpoint(http.handle_chat_stream_stop_request)
        out.append(Route("/chat_stream/stop", stop, methods=["POST"]))
        switch = _endpoint(conversations.switch_version)
        out.append(Route("/switch_version", switch, methods=["POST"]))
    if "conversations" in selected:
        one = "/conversations/{conversation_id}"
        out += [
            Route(one, _endpoint(conversations.update), methods=["PATCH"]),
            Route(one, _endpoint(conversations.delete), methods=["DELETE"]),
            Route(f"{one}/select", _endpoint(conversations.select), methods=["POST"]),
        ]
    if "webui_js" in selected:
        # The page's vendored libraries (markdown, sanitizer, highlighter), with its script.
        libraries = _endpoint(lambda request: vendor(request, http.roles))
        out.append(Route("/vendor/{name}", libraries, methods=["GET"]))
    out.append(Route("/health", http.handle_health_request, methods=["GET"]))
    out.append(Route("/load", http.handle_load_request, methods=["GET"]))
    if "openai" in selected:
        operations = OperationsApi(http)
        out += [
            Route("/v1/models", openai.models, methods=["GET"]),
            Route("/v1/models/{model:path}", openai.model, methods=["GET"]),
            Route("/v1/completions", openai.completions, methods=["POST"]),
            Route("/tokenize", operations.tokenize, methods=["POST"]),
            Route("/detokenize", operations.detokenize, methods=["POST"]),
            Route("/version", operations.version, methods=["GET"]),
        ]
    return out


def _metrics_handler(
    http: HttpApi, open_metrics: bool, token: str | None
) -> Callable[[Request], Any]:
    if token:
        return guarded_by_token(token, http.render_metrics)
    return http.render_metrics if open_metrics else http.handle_metrics_request


def _endpoint(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    # Starlette takes any callable returning an ASGI app; bind the name for error messages.
    async def endpoint(request: Request) -> Any:
        return await handler(request)

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint


def append_apis(app: Starlette, chat_stream: ChatService, opts: Mapping[str, Any] | None) -> None:
    """Add the chosen routes to an existing Starlette or FastAPI app."""
    app.router.routes.extend(routes(chat_stream, opts))


def session_middleware(opts: Mapping[str, Any] | None) -> list[Middleware]:
    """The middlewares ``append_middlewares`` adds: sessions, and CORS in develop mode."""
    opts = dict(opts or {})
    # The original nested the session options under "fast_session"; accept both.
    session_opts = {**dict(opts.pop("fast_session", None) or {}), **opts}
    develop = bool(session_opts.pop("develop_mode", False))
    origins = session_opts.pop("cors_origins", ["http://localhost:3000", "http://127.0.0.1:3000"])
    if session_opts.get("max_age") == 0:
        session_opts["max_age"] = None  # fastsession's "until the browser closes"
    allowed = {
        "secret_key",
        "store",
        "secure",
        "same_site",
        "cookie_name",
        "max_age",
        "path",
        "session_ttl",
    }
    unknown = sorted(set(session_opts) - allowed)
    if unknown:
        raise ValueError(f"unknown middleware options {unknown}; known: {sorted(allowed)}")
    middleware = [Middleware(SessionMiddleware, **session_opts)]
    if develop:
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=list(origins),
                allow_credentials=True,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=[
                    "X-ChatStream-Last-Generated-Message-Id",
                    "X-ChatStream-API-DevTool-Enabled",
                ],
            ),
        )
    return middleware


def _middleware(
    chat_stream: ChatService,
    store: SessionStore | None,
    secret_key: str | bytes | None,
    secure: bool,
    api_key: str | None,
) -> list[Middleware]:
    """The body deadline outside, then sessions, then the rate limit (which reads the
    session, and bounds the guesses of an API key), then the API key, around the routes."""

    def options() -> HttpOptions:  # read per request: a later configure_http applies
        return http_api_of(chat_stream).options

    return [
        Middleware(RequestBodyGuard, options=options),
        *session_middleware({"secret_key": secret_key, "store": store, "secure": secure}),
        Middleware(RateLimitMiddleware, options=options),
        Middleware(ApiKeyMiddleware, api_key=api_key),
    ]


def cors_middleware(origins: Sequence[str]) -> list[Middleware]:
    """Starlette's CORS middleware for these origins (``"*"``: any), or none for none (only
    same-origin pages may call). No credentials: cross-origin callers send a bearer key, not
    the session cookie.

    Raises:
        ConfigError: ``origins`` is a string, or holds something else than strings.
    """
    if isinstance(origins, str) or not all(isinstance(o, str) and o for o in origins):
        raise ConfigError("cors_origins", f"must be a list of origins, got {origins!r}")
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-ChatStream-Last-Generated-Message-Id"],
        )
    ]


def append_middlewares(app: Starlette, opts: Mapping[str, Any] | None = None) -> None:
    """Add the session middleware (and CORS in ``develop_mode``) to an app."""
    for middleware in reversed(session_middleware(opts)):
        app.add_middleware(middleware.cls, *middleware.args, **middleware.kwargs)


def create_app(
    chat_stream: ChatService,
    *,
    apis: Mapping[str, Any] | None = None,
    secret_key: str | bytes | None = None,
    store: SessionStore | None = None,
    secure_cookies: bool = False,
    http_options: HttpOptions | None = None,
    web_ui_params: Mapping[str, Any] | None = None,
    on_ready: Callable[[], None] | None = None,
    debug: bool = False,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    open_metrics: bool = False,
    metrics_token: str | None = None,
) -> Starlette:
    """A Starlette app serving ``chat_stream``: every API (or the chosen ones), the web UI,
    sessions, ``/health`` and ``/metrics``, with the model loaded in the app's lifespan.

    ``api_key`` guards every route under ``/v1/`` (:class:`~.auth.ApiKeyMiddleware`);
    ``cors_origins`` lets pages of those origins call the app (:func:`cors_middleware`);
    ``open_metrics`` and ``metrics_token`` decide who reads ``/metrics`` (:func:`routes`).
    """
    if http_options is not None:
        configure_http(chat_stream, http_options)
    drain_timeout = http_api_of(chat_stream).options.drain_timeout_sec

    async def drain_when_asked(app: Starlette) -> None:
        # start_drain may come from a signal handler, which can only set a flag: look at it
        # often. The server keeps listening meanwhile, so that new requests get an honest
        # 503 rather than a refused connection; it is told to stop once the drain is over.
        while not chat_stream.draining:  # noqa: ASYNC110 (no Event can be set from a signal)
            await anyio.sleep(0.1)
        await chat_stream.drain(app.state.drain_timeout)
        on_drained = getattr(app.state, "on_drained", None)
        if on_drained is not None:
            on_drained()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with chat_stream, anyio.create_task_group() as watcher:
            watcher.start_soon(drain_when_asked, app)
            if on_ready is not None:
                on_ready()
            try:
                yield
            finally:
                watcher.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await chat_stream.drain(app.state.drain_timeout)

    middleware = [
        *cors_middleware(cors_origins),
        *_middleware(chat_stream, store, secret_key, secure_cookies, api_key),
    ]
    selection: dict[str, Any] = dict(apis) if apis is not None else {"all": True}
    if web_ui_params:
        selection["web_ui_params"] = dict(web_ui_params)
    app_routes = routes(
        chat_stream, selection, open_metrics=open_metrics, metrics_token=metrics_token
    )
    app = Starlette(debug=debug, routes=app_routes, middleware=middleware, lifespan=lifespan)
    # The server runner finds it here to start draining on SIGTERM, may change the drain
    # timeout, and sets ``app.state.on_drained`` to be told when the drain is over.
    app.state.chat_stream = chat_stream
    app.state.drain_timeout = drain_timeout
    return app


def mountable_app(
    chat_stream: ChatService,
    *,
    apis: Mapping[str, Any] | None = None,
    secret_key: str | bytes | None = None,
    store: SessionStore | None = None,
    secure_cookies: bool = False,
    api_key: str | None = None,
    open_metrics: bool = False,
    metrics_token: str | None = None,
) -> Starlette:
    """The routes and sessions of ``create_app`` without a lifespan, for ``Mount`` or
    FastAPI's ``app.mount(...)``: the host app runs ``async with chat_stream:`` in its own
    lifespan (and adds CORS, if it wants it, around everything it serves)."""
    middleware = _middleware(chat_stream, store, secret_key, secure_cookies, api_key)
    app_routes = routes(chat_stream, apis, open_metrics=open_metrics, metrics_token=metrics_token)
    return Starlette(routes=app_routes, middleware=middleware)
