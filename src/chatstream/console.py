"""Console chat: ``chatstream chat``.

Streams each reply as it is generated and keeps the conversation. Commands: ``/clear``
(forget the conversation), ``/regenerate`` (answer the last message again), ``/help``,
``/exit`` (or Ctrl+D). Ctrl+C stops the reply being written and keeps what was written so far;
it never leaves the program.
"""

from __future__ import annotations

import signal
import sys
from typing import IO, Any

import anyio

__all__ = ["run_console", "weights_label"]

HELP = "Commands: /clear  /regenerate  /help  /exit (or Ctrl+D).  Ctrl+C stops a reply."


def weights_label(chat_stream: Any) -> str:
    """How the banners name the weights: "int8 weights", "bf16 weights", "unquantized
    weights", or "mock"."""
    if chat_stream.config.use_mock_response:
        return "mock"
    return f"{chat_stream.config.quantize or 'unquantized'} weights"


class _Console:
    def __init__(self, chat_stream: Any, stdin: IO[str], stdout: IO[str]) -> None:
        self.chat_stream = chat_stream
        self.stdin = stdin
        self.stdout = stdout
        self.conversation = chat_stream.new_conversation()
        self.reply_scope: anyio.CancelScope | None = None

    def say(self, text: str = "", end: str = "\n") -> None:
        self.stdout.write(text + end)
        self.stdout.flush()

    async def run(self) -> None:
        async with self.chat_stream, anyio.create_task_group() as tg:
            tg.start_soon(self._watch_interrupts)
            model = f"{self.chat_stream.model_id} ({weights_label(self.chat_stream)})"
            self.say(f"chatstream: chatting with {model}. {HELP}")
            while True:
                self.say("> ", end="")
                line = await anyio.to_thread.run_sync(self.stdin.readline, abandon_on_cancel=True)
                if not line:  # end of input
                    self.say()
                    break
                text = line.rstrip("\n")
                command = text.strip().lower()
                if command in ("/exit", "/quit"):
                    break
                if command == "/help":
                    self.say(HELP)
                elif command == "/clear":
                    self.conversation.clear()
                    self.say("(conversation cleared)")
                elif command == "/regenerate":
                    await self._reply(None, regenerate=True)
                elif text.strip():
                    await self._reply(text, regenerate=False)
            tg.cancel_scope.cancel()

    async def _reply(self, text: str | None, *, regenerate: bool) -> None:
        from chatstream.core import ChatStreamError

        with anyio.CancelScope() as scope:
            self.reply_scope = scope
            try:
                async for delta in self.chat_stream.chat(
                    self.conversation, text, regenerate=regenerate
                ):
                    self.say(delta, end="")
            except ChatStreamError as error:
                self.say(f"\n(error: {error})", end="")
        self.reply_scope = None
        self.say("\n(stopped)" if scope.cancelled_caught else "")

    async def _watch_interrupts(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if self.reply_scope is not None:
                    self.reply_scope.cancel()
                else:
                    self.say("\n(Ctrl+C stops a reply; /exit or Ctrl+D leaves)\n> ", end="")


def run_console(
    chat_stream: Any,
    *,
    backend: str = "asyncio",
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
) -> None:
    """Chat in the terminal until /exit or end of input."""
    console = _Console(chat_stream, stdin or sys.stdin, stdout or sys.stdout)
    anyio.run(console.run, backend=backend)
