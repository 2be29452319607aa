"""Console chat with the original's ``handle_console_input`` loop.

python examples/console_chat.py             # type, Enter; an empty line or "exit" leaves
"""

from __future__ import annotations

import sys

import anyio

from chatstream import ChatStream
from chatstream.embedded import load_embedded_model


async def main() -> None:
    model, tokenizer = load_embedded_model()
    async with ChatStream(model=model, tokenizer=tokenizer, max_new_tokens=128) as chat_stream:
        while True:
            user_input = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
            if user_input in ("", "exit"):
                break
            async for _text, update, position in chat_stream.handle_console_input(user_input):
                print(update, end="\n" if position == "end" else "", flush=True)


if __name__ == "__main__":
    anyio.run(main)
