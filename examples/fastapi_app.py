"""A FastAPI app with chatstream's routes mounted under /chat next to its own routes.

uvicorn examples.fastapi_app:app            # the web UI is at http://127.0.0.1:8000/chat/
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from chatstream import ChatStream
from chatstream.adapters.starlette import mountable_app
from chatstream.embedded import load_embedded_model

model, tokenizer = load_embedded_model()
chat_stream = ChatStream(model=model, tokenizer=tokenizer)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with chat_stream:  # starts the model thread at startup, stops it at shutdown
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/chat", mountable_app(chat_stream, secret_key="change me"))


@app.get("/status")
async def status() -> dict[str, int]:
    stats = chat_stream.statistics()
    return {"running": stats.running, "waiting": stats.waiting}
