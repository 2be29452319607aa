"""A prompt class of your own: the prompt format of a model without a chat template.

python examples/custom_prompt.py
"""

from __future__ import annotations

import anyio

from chatstream import AbstractChatPrompt, ChatStream
from chatstream.core import PromptOptions


class ChatPromptAlpaca(AbstractChatPrompt):
    """Alpaca-style turns: "### Instruction:" and "### Response:" blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.set_system("Below is an instruction that describes a task.\n\n")
        self.set_requester("### Instruction")
        self.set_responder("### Response")

    def get_stop_strs(self) -> list[str]:
        return ["###"] if self.is_chat_mode_enabled() else []

    def build_initial_prompt(self, chat_prompt: AbstractChatPrompt) -> None:
        pass  # few-shot examples would go here; truncation never drops them

    def create_prompt(self, opts: PromptOptions | None = None) -> str:
        parts = [self.system]
        for content in self.get_contents(opts):
            message = content.get_message()
            parts.append(
                f"{content.get_role()}:\n" + (f"{message}\n\n" if message is not None else "")
            )
        return "".join(parts)


async def main() -> None:
    chat_stream = ChatStream(
        use_mock_response=True,
        mock_params={"type": "echo", "time_per_token_sec": 0},
        chat_prompt_clazz=ChatPromptAlpaca,
    )
    async with chat_stream:
        conversation = chat_stream.new_conversation()
        reply = "".join([d async for d in chat_stream.chat(conversation, "Say hello.")])
        print("reply:", reply)
        print("prompt so far:")
        print(chat_stream.render_history(conversation))


if __name__ == "__main__":
    anyio.run(main)
