"""A prompt class that renders with the tokenizer's own chat template."""

from __future__ import annotations

from typing import Any

from chatstream.core import AbstractChatPrompt, PromptOptions

__all__ = ["chat_template_prompt_class", "has_chat_template"]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_template_prompt_class(tokenizer: Any) -> type[AbstractChatPrompt]:
    """A prompt class bound to ``tokenizer`` that renders ``tokenizer.apply_chat_template``.

    Roles are "user" and "assistant"; the system text, when set, becomes a system message.
    The template adds its own special tokens, so the prompt is encoded without more.
    """

    class ChatPromptChatTemplate(AbstractChatPrompt):
        add_special_tokens = False

        def __init__(self) -> None:
            super().__init__()
            self.set_requester("user")
            self.set_responder("assistant")

        def get_stop_strs(self) -> list[str]:
            return []

        def build_initial_prompt(self, chat_prompt: AbstractChatPrompt) -> None:
            pass

        def create_prompt(self, opts: PromptOptions | None = None) -> str:
            contents = self.get_contents(opts)
            if not self.is_chat_mode_enabled():
                last = self.get_requester_last_msg()
                return "" if last is None else last
            messages = [{"role": "system", "content": self.system}] if self.system else []
            open_reply = False
            for content in contents:
                message = content.get_message()
                if message is None:
                    open_reply = True
                    continue
                messages.append({"role": content.get_role(), "content": message})
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=open_reply
            )
            return str(text)

    return ChatPromptChatTemplate
