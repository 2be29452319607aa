"""A web server written for the original ChatStream, migrated to chatstream.

The original's calls are all here, unchanged: the constructor options, ``append_middlewares``
with its ``fast_session`` options, ``append_apis``, hand-written routes that call
``handle_chat_stream_request`` (reading the body first, with a finish callback) and
``handle_set_feedback_request`` (with ``on_feedback_received``), and ``index``/``js``. What
changed: the imports, Starlette routes instead of FastAPI decorators, and a lifespan
``async with chat_stream:`` instead of ``start_queue_worker()`` at startup.

It runs in mock mode, without a model:

    python examples/migrate_from_original.py         # then open http://127.0.0.1:8000/
    python examples/migrate_from_original.py trio    # the same on trio, under hypercorn
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from chatstream import ChatPromptTogetherRedPajamaINCITEChat as ChatPrompt
from chatstream import ChatStream
from chatstream.adapters.sessions import MemoryStore  # was: from fastsession import MemoryStore

logger = logging.getLogger("migrate_from_original")

chat_stream = ChatStream(
    num_of_concurrent_executions=2,
    max_queue_size=5,
    use_mock_response=True,  # with a model: model=model, tokenizer=tokenizer, device="cuda"
    mock_params={"type": "round", "initial_wait_sec": 0, "time_per_token_sec": 0.05},
    chat_prompt_clazz=ChatPrompt,
)

#: How each chat stream ended, as the finish callback reported it (newest last).
finished: list[str] = []
#: Feedback from the web UI's like and dislike buttons (newest last).
feedback: list[dict[str, Any]] = []


def on_stream_finished(request: Request, message: str) -> None:
    # Once per stream: "success", "error", "client_disconnected_while_streaming" or
    # "client_disconnected_before_streaming". An async def works too.
    finished.append(message)
    logger.info("chat stream ended: %s", message)


async def on_feedback_received(data: dict[str, Any]) -> None:
    # is_like, form_data, prompt, target_message_id, target_message, generation_params
    feedback.append(data)
    logger.info("feedback on %s: like=%s", data["target_message_id"], data["is_like"])


async def stream_api(request: Request) -> Any:
    request_body = await request.body()  # "interception": read (and check, log...) it first
    return await chat_stream.handle_chat_stream_request(
        request, request_body=request_body, callback=on_stream_finished
    )


async def set_feedback_api(request: Request) -> Any:
    return await chat_stream.handle_set_feedback_request(
        request, {"on_feedback_received": on_feedback_received}
    )


async def index(request: Request) -> Any:
    return await chat_stream.index(request, opts={"ui_init_params": {"title": "My assistant"}})


async def js(request: Request) -> Any:
    return await chat_stream.js(request)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Was: @app.on_event("startup") ... await chat_stream.start_queue_worker()
    async with chat_stream:  # the model thread and the queue run while the app does
        yield


app = Starlette(
    routes=[
        Route("/chat_stream", stream_api, methods=["POST"]),
        Route("/set_feedback", set_feedback_api, methods=["POST"]),
        Route("/", index, methods=["GET"]),
        Route("/chatstream.js", js, methods=["GET"]),
    ],
    lifespan=lifespan,
)

chat_stream.append_middlewares(
    app,
    {
        "fast_session": {
            # The same key in every process; a random one ends the sessions with the process.
            "secret_key": os.environ.get("CHATSTREAM_SECRET_KEY") or secrets.token_urlsafe(32),
            "store": MemoryStore(),
        },
        "develop_mode": False,
    },
)
# Every other endpoint; the hand-written routes above come first, so they win.
chat_stream.append_apis(app, {"all": True})
app.state.chat_stream = chat_stream  # lets chatstream.server drain it on SIGTERM


if __name__ == "__main__":
    from chatstream.server import serve

    logging.basicConfig(level=logging.INFO)
    serve(app, port=8000, loop="trio" if sys.argv[1:] == ["trio"] else "asyncio")
