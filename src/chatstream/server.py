"""Run a chatstream app under uvicorn (asyncio) or hypercorn (trio), with graceful drain.

On SIGINT or SIGTERM the ChatStream stops admitting (new requests get 503 and ``/health``
says draining), the server stops accepting connections, and running streams get
``drain_timeout`` seconds to finish before they are cancelled.

This is an entry point, so it may name its event loop: uvicorn runs asyncio, hypercorn's
trio worker runs trio. The app itself only ever speaks AnyIO.

    python -m chatstream.server --factory tests.http.apps:mock_app --loop trio --port 8000
"""

from __future__ import annotations

import argparse
import importlib
import signal
from typing import Any, Literal

__all__ = ["main", "serve"]

Loop = Literal["asyncio", "trio"]


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    loop: Loop = "asyncio",
    drain_timeout: float = 30.0,
    log_level: str = "warning",
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then drain and stop."""
    chat_stream = getattr(getattr(app, "state", None), "chat_stream", None)
    if loop == "trio":
        _serve_trio(app, chat_stream, host, port, drain_timeout, log_level)
    else:
        _serve_asyncio(app, chat_stream, host, port, drain_timeout, log_level)


def _serve_asyncio(
    app: Any, chat_stream: Any, host: str, port: int, drain_timeout: float, log_level: str
) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="asyncio",
        lifespan="on",
        log_level=log_level,
        timeout_graceful_shutdown=int(drain_timeout) or 1,
    )
    server = uvicorn.Server(config)
    stop = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        # Runs in a signal handler: start_drain only sets a flag.
        if chat_stream is not None:
            chat_stream.start_drain()
        stop(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    server.run()


def _serve_trio(
    app: Any, chat_stream: Any, host: str, port: int, drain_timeout: float, log_level: str
) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = drain_timeout
    config.loglevel = log_level.upper()

    async def main() -> None:
        shutdown = trio.Event()

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    if chat_stream is not None:
                        chat_stream.start_drain()
                    shutdown.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_signal)
            await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait)
            nursery.cancel_scope.cancel()

    trio.run(main)


def load_factory(spec: str) -> Any:
    """``module:function`` -> the app the function returns."""
    module_name, _, name = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), name or "app")
    return factory() if callable(factory) and not hasattr(factory, "router") else factory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factory", required=True, help="module:function returning the app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--loop", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    serve(
        load_factory(args.factory),
        host=args.host,
        port=args.port,
        loop=args.loop,
        drain_timeout=args.drain_timeout,
    )


if __name__ == "__main__":
    main()
