"""chatstream: streaming chat for HuggingFace causal language models, under load control.

The sans-IO core (prompt classes, conversations, configuration) is imported eagerly: it is
standard library only. ``ChatStream`` and the other adapters are imported on first use, so
``import chatstream`` does not pull in anyio, torch or starlette.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core import (
    AbstractChatPrompt,
    ChatContent,
    ChatPromptRinnaJapaneseGPTNeoxInst,
    ChatPromptTogetherRedPajamaINCITEChat,
    ChatStreamConfig,
    ChatStreamError,
    ConfigError,
    Conversation,
    GenerationParams,
)
from .core.version import VERSION as __version__

if TYPE_CHECKING:
    from .chat_stream import ChatStream, RequestRejected, Turn

__all__ = [
    "AbstractChatPrompt",
    "ChatContent",
    "ChatPromptRinnaJapaneseGPTNeoxInst",
    "ChatPromptTogetherRedPajamaINCITEChat",
    "ChatStream",
    "ChatStreamConfig",
    "ChatStreamError",
    "ConfigError",
    "Conversation",
    "GenerationParams",
    "RequestRejected",
    "Turn",
    "__version__",
]

_LAZY = {
    "ChatStream": "chatstream.chat_stream",
    "RequestRejected": "chatstream.chat_stream",
    "Turn": "chatstream.chat_stream",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chatstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
