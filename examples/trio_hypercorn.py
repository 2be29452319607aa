"""The same app on trio, served by hypercorn's trio worker.

python examples/trio_hypercorn.py           # then open http://127.0.0.1:8000/
"""

from __future__ import annotations

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from chatstream import ChatStream
from chatstream.adapters.starlette import create_app
from chatstream.embedded import load_embedded_model


async def main(port: int = 8000) -> None:
    model, tokenizer = load_embedded_model()
    app = create_app(ChatStream(model=model, tokenizer=tokenizer), secret_key="change me")
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    await serve(app, config)  # type: ignore[arg-type]  # hypercorn's ASGI types are narrower


if __name__ == "__main__":
    trio.run(main)
