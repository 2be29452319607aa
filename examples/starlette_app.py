"""A Starlette app serving chat: every API, the web UI, sessions, health and metrics.

uvicorn examples.starlette_app:app          # then open http://127.0.0.1:8000/
"""

from __future__ import annotations

from chatstream import ChatStream
from chatstream.adapters.starlette import create_app
from chatstream.embedded import load_embedded_model

model, tokenizer = load_embedded_model()  # SmolLM2-135M-Instruct, converted once into the cache
chat_stream = ChatStream(model=model, tokenizer=tokenizer, num_of_concurrent_executions=4)
app = create_app(chat_stream, secret_key="change me: sign session cookies with a real secret")
