"""Run a chatstream app under uvicorn (asyncio) or hypercorn (trio): graceful drain, exit 0,
and stalled connections closed.

Shutdown: the first SIGINT or SIGTERM starts the drain. New requests get 503 with
``Retry-After`` and ``/health`` says draining while the listening socket stays open; running
streams get ``drain_timeout`` seconds, after which each still running ends with its format's
final error event (reason ``shutdown``). Then the server stops and the process exits 0. A
second SIGINT stops at once.

Connections: a client gets ``header_timeout`` seconds for each request's headers (uvicorn
bounds only idle keep-alive connections, so its h11 protocol is given that deadline here;
hypercorn's keep-alive timer already covers the headers), and ``body_timeout_sec`` for its
body (:mod:`chatstream.adapters.http.request_body`, on both). Under uvicorn at most
``max_connections`` are open at once (more get a 503 and are closed); the descriptor limit is
raised to its hard limit at start, and the cap kept below it.

This is an entry point, so it may name its event loop: uvicorn runs asyncio, hypercorn's
trio worker runs trio. The app itself only ever speaks AnyIO.

    python -m chatstream.server --factory tests.http.apps:mock_app --loop trio --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import math
import resource
import signal
import time
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["main", "serve"]

Loop = Literal["asyncio", "trio"]

#: Seconds the server still gives responses after the drain, to write their last bytes.
_CLOSE_GRACE = 5.0
#: Descriptors kept free under the connection cap (model files, logs, the store, accepts).
_RESERVED_DESCRIPTORS = 64
#: The answer to a connection past the cap.
_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 21\r\n\r\ntoo many connections\n"
)
_refusals = logging.getLogger("chatstream.server")


class _OncePerInterval(logging.Filter):
    """Lets a repeated log record through once per ``interval`` seconds, without its
    traceback, saying how many were held back: descriptors that run out, or a connection
    flood, must not fill the disk."""

    def __init__(self, interval: float = 10.0, prefix: str = "") -> None:
        super().__init__()
        self.interval = interval
        self.prefix = prefix
        self._last = float("-inf")
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefix):
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            self._held += 1
            return False
        if self._held:
            message += f" ({self._held} more like it in the last {now - self._last:.0f} s)"
        record.msg, record.args = message.splitlines()[0], ()
        record.exc_info = record.exc_text = None
        self._last, self._held = now, 0
        return True


def _quiet_floods() -> None:
    _refusals.addFilter(_OncePerInterval())
    # What the loops log each time accept() finds no descriptor left.
    logging.getLogger("trio.serve_listeners").addFilter(_OncePerInterval())
    logging.getLogger("asyncio").addFilter(
        _OncePerInterval(prefix="socket.accept() out of system resource")
    )


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    loop: Loop = "asyncio",
    drain_timeout: float | None = None,
    log_level: str = "warning",
    header_timeout: float = 10.0,
    max_connections: int = 1000,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then drain and stop.

    Args:
        drain_timeout: seconds running streams get at shutdown; None keeps the app's own
            (``HttpOptions.drain_timeout_sec`` for ``create_app``).
    """
    signals = _Signals(getattr(app, "state", None), drain_timeout)
    limit = _raise_descriptor_limit()
    _quiet_floods()
    max_connections = max(1, min(max_connections, limit - _RESERVED_DESCRIPTORS))
    if loop == "trio":
        _serve_trio(app, signals, host, port, header_timeout, log_level)
    else:
        _serve_asyncio(app, signals, host, port, header_timeout, max_connections, log_level)


class _Signals:
    """What SIGINT and SIGTERM do, on either loop.

    An app made by ``create_app`` drains itself: the first signal starts its drain, and the
    app says when it is over (``state.on_drained``). Any other app with a ``chat_stream`` in
    its state gets ``start_drain`` and the server's own graceful stop, bounded by the drain
    timeout. A second signal stops at once.
    """

    def __init__(self, state: Any, drain_timeout: float | None) -> None:
        self.state = state
        self.chat_stream = getattr(state, "chat_stream", None)
        self.drains_itself = self.chat_stream is not None and hasattr(state, "drain_timeout")
        if self.drains_itself and drain_timeout is not None:
            state.drain_timeout = drain_timeout
        self.grace = _CLOSE_GRACE if self.drains_itself else (drain_timeout or 30.0)
        self.count = 0

    def on_drained(self, stop: Callable[[], None]) -> None:
        if self.drains_itself:
            self.state.on_drained = stop

    def received(self) -> bool:
        """A signal came (in a signal handler: sets flags only); True: stop the server."""
        self.count += 1
        if self.chat_stream is not None:
            self.chat_stream.start_drain()
        return not self.drains_itself or self.count > 1


def _raise_descriptor_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _serve_asyncio(
    app: Any,
    signals: _Signals,
    host: str,
    port: int,
    header_timeout: float,
    max_connections: int,
    log_level: str,
) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="asyncio",
        http=_h11_protocol(header_timeout, max_connections),
        lifespan="on",
        log_level=log_level,
        timeout_keep_alive=int(min(5.0, header_timeout)) or 1,
        timeout_graceful_shutdown=math.ceil(signals.grace),
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    def handle_exit(sig: int, frame: Any) -> None:
        # Replaces uvicorn's handler, which would also re-raise the signal after shutdown
        # (exit 130 and a traceback for Ctrl+C).
        if signals.received():
            server.force_exit = server.should_exit
            stop()

    signals.on_drained(stop)
    server.handle_exit = handle_exit  # type: ignore[method-assign]
    server.run()


def _h11_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than
    ``header_timeout`` seconds (from the connection's start, or the previous response's
    end), and answering 503 to connections past ``max_connections``."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                # Accepted only to be told: uvicorn's own limit still parses the request
                # (the descriptors run out meanwhile) and logs a line for each.
                self._refused = True
                transport.write(_FULL)
                transport.close()
                _refusals.warning("%d connections open: refusing more", max_connections)
                return
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # the headers are in; the body has its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _expire(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def _serve_trio(
    app: Any,
    signals: _Signals,
    host: str,
    port: int,
    header_timeout: float,
    log_level: str,
) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = signals.grace
    # hypercorn's idle timer runs from a connection's start until its request's headers
    # are in, and again between requests: it is the header deadline.
    config.keep_alive_timeout = header_timeout
    config.loglevel = log_level.upper()

    async def main() -> None:
        shutdown = trio.Event()
        signals.on_drained(shutdown.set)

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for _ in received:
                    if signals.received():
                        if shutdown.is_set():
                            config.graceful_timeout = 0  # a second signal: stop now
                        shutdown.set()

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
    parser.add_argument("--drain-timeout", type=float)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--max-connections", type=int, default=1000)
    args = parser.parse_args(argv)
    serve(
        load_factory(args.factory),
        host=args.host,
        port=args.port,
        loop=args.loop,
        drain_timeout=args.drain_timeout,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
    )


if __name__ == "__main__":
    main()
