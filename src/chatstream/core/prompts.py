"""Prompt classes: the original ChatStream's ``AbstractChatPrompt`` API and its two presets.

A prompt class keeps the history of one chat (a list of :class:`ChatContent`) and renders it
into the text a given model expects. Subclasses choose the role names, the format, the stop
strings and the text replacements; :class:`AbstractChatPrompt` supplies everything else, with
the public methods and behaviour of the original and without its bugs:

* The side of a message (requester or responder) is stored on the message itself instead of
  being guessed from the role name, so both sides may share a role name.
* Only ``None`` means "no message yet"; ``""`` is an empty message and is rendered as one.
* ``set_responder_last_msg`` and ``set_responder_last_msg_id`` refuse to write when the last
  message is not the responder's, instead of overwriting the user's message.
* :meth:`AbstractChatPrompt.to_dict` and :meth:`AbstractChatPrompt.from_dict` round-trip
  losslessly through JSON (message ids kept, one object per message), and instances pickle.
* ``replace_string`` and the input replacement accept ``None``.

Histories hold the *model form* of each message (for rinna, ``<NL>`` instead of a newline):
the input replacements are applied when a requester message is added.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, Self, TypeAlias, TypedDict

from .errors import LocalProtocolError

__all__ = [
    "AbstractChatPrompt",
    "ChatContent",
    "ChatPromptRinnaJapaneseGPTNeoxInst",
    "ChatPromptTogetherRedPajamaINCITEChat",
    "PromptOptions",
    "Replacements",
]

#: ``(old, new)`` pairs applied in order with :meth:`str.replace`.
Replacements: TypeAlias = list[tuple[str, str]]


class PromptOptions(TypedDict, total=False):
    """Options of :meth:`AbstractChatPrompt.get_contents` and ``create_prompt``.

    Attributes:
        omit_last_message: render the last message as an open one (role only, no text), as
            the prompt looked when that message was being generated.
        to_message_id: stop after the message with this id (the whole history if no message
            has it).
    """

    omit_last_message: bool
    to_message_id: str | None


def _check_str(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{where} must be a string, got {value!r}")
    return value


def _check_optional_str(where: str, value: object) -> str | None:
    return None if value is None else _check_str(where, value)


def _check_bool(where: str, value: object) -> bool:
    # bool is an int subclass; a 0 or 1 from a foreign store is not a flag.
    if not isinstance(value, bool):
        raise LocalProtocolError(f"{where} must be true or false, got {value!r}")
    return value


@dataclass(eq=False)
class ChatContent:
    """One message of a chat.

    Equality is identity: two messages with the same text are still two messages, and the
    side lists of :class:`AbstractChatPrompt` share these objects with its history.

    Attributes:
        role: the role name the message is rendered with (``<human>``, ``ユーザー``...).
        message: the text, or ``None`` while the message is still to be generated.
        message_id: the id of the message, or ``None`` when it has none.
        is_requester: ``True`` for the user's side, ``False`` for the model's.
    """

    role: str
    message: str | None = ""
    message_id: str | None = None
    _: KW_ONLY
    is_requester: bool = False

    def get_role(self) -> str:
        """Return the role name."""
        return self.role

    def get_message(self) -> str | None:
        """Return the text, ``None`` when there is none yet."""
        return self.message

    def set_message(self, message: str | None) -> None:
        """Replace the text."""
        self.message = message

    def set_message_id(self, message_id: str | None) -> None:
        """Replace the message id."""
        self.message_id = message_id

    def get_message_id(self) -> str | None:
        """Return the message id, ``None`` when there is none."""
        return self.message_id

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict that :meth:`from_dict` turns back into the same fields."""
        return {
            "role": self.role,
            "message": self.message,
            "message_id": self.message_id,
            "is_requester": self.is_requester,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Self:
        """Build a content from :meth:`to_dict` output.

        Missing keys take the constructor's defaults, so the original's ``{"role", "message"}``
        dicts load too.

        Raises:
            LocalProtocolError: a field is missing (``role``) or has the wrong type.
        """
        if "role" not in data:
            raise LocalProtocolError("chat content has no 'role'")
        return cls(
            _check_str("chat content 'role'", data["role"]),
            _check_optional_str("chat content 'message'", data.get("message", "")),
            _check_optional_str("chat content 'message_id'", data.get("message_id")),
            is_requester=_check_bool(
                "chat content 'is_requester'", data.get("is_requester", False)
            ),
        )


class AbstractChatPrompt(abc.ABC):
    """History of one chat plus the rules to render it for one model.

    Subclasses set the role names in ``__init__`` and implement :meth:`get_stop_strs`,
    :meth:`create_prompt` and :meth:`build_initial_prompt`. ``from_dict`` and
    :meth:`new_conversation` call ``cls()``, so ``__init__`` must take no arguments.

    ``responder_messages`` and ``requester_messages`` hold the very objects of
    ``chat_contents`` that belong to each side, in order. Change the history through the
    methods so that the three lists stay in step.

    Attributes:
        add_special_tokens: how to encode the prompt: ``None`` lets the tokenizer add its
            automatic special tokens, a bool is passed as ``add_special_tokens``. It belongs to
            the preset because it depends on the model (rinna needs ``False``).
        strip_reply: drop the leading whitespace of the model's reply (the original stripped
            every reply).
        system: text put before the history, with no separator.
        chat_contents: the history, oldest first.
        responder_messages: the responder's messages of ``chat_contents``.
        requester_messages: the requester's messages of ``chat_contents``.
        requester: the role name of the user.
        responder: the role name of the model.
        chat_mode: ``False`` makes the prompt just the last user message, with no stop strings.
    """

    add_special_tokens: bool | None = None
    strip_reply: bool = True

    def __init__(self) -> None:
        self.system = ""
        self.chat_contents: list[ChatContent] = []
        self.responder_messages: list[ChatContent] = []
        self.requester_messages: list[ChatContent] = []
        self.requester = ""
        self.responder = ""
        self.chat_mode = True

    @classmethod
    def new_conversation(cls) -> Self:
        """Create an instance and let :meth:`build_initial_prompt` add its initial context.

        The one place every front end (HTTP sessions, console chat) starts a chat, so that
        few-shot context is never forgotten.
        """
        prompt = cls()
        prompt.build_initial_prompt(prompt)
        return prompt

    # -- setters and getters -----------------------------------------------------------------

    def set_system(self, system: str) -> None:
        """Set the text put before the history (no separator is added)."""
        self.system = system

    def get_system(self) -> str:
        """Return the text put before the history."""
        return self.system

    def set_requester(self, requester: str) -> None:
        """Set the role name of the user; messages already added keep theirs."""
        self.requester = requester

    def get_requester(self) -> str:
        """Return the role name of the user."""
        return self.requester

    def set_responder(self, responder: str) -> None:
        """Set the role name of the model; messages already added keep theirs."""
        self.responder = responder

    def get_responder(self) -> str:
        """Return the role name of the model."""
        return self.responder

    def set_chat_mode_enabled(self, enabled: bool) -> None:
        """Turn chat mode on or off (off: the prompt is the last user message alone)."""
        self.chat_mode = enabled

    def is_chat_mode_enabled(self) -> bool:
        """Return whether chat mode is on."""
        return self.chat_mode

    def is_requester_role(self, role: str) -> bool:
        """Return whether ``role`` is the user's role name."""
        return role == self.requester

    # -- adding and reading messages ---------------------------------------------------------

    def add_requester_msg(self, message: str | None, message_id: str | None = None) -> None:
        """Append a user message, after the input replacements (``None`` stays ``None``)."""
        message = self.replace_string(message, self.get_replacement_when_input())
        self._append(ChatContent(self.requester, message, message_id, is_requester=True))

    def add_responder_msg(self, message: str | None, message_id: str | None = None) -> None:
        """Append a model message; ``None`` marks the one about to be generated."""
        self._append(ChatContent(self.responder, message, message_id, is_requester=False))

    def _append(self, content: ChatContent) -> None:
        self.chat_contents.append(content)
        self._side(content.is_requester).append(content)

    def _side(self, is_requester: bool) -> list[ChatContent]:
        return self.requester_messages if is_requester else self.responder_messages

    def _last_is(self, is_requester: bool) -> bool:
        return bool(self.chat_contents) and self.chat_contents[-1].is_requester == is_requester

    def get_contents(self, opts: PromptOptions | None = None) -> list[ChatContent]:
        """Return the history (a new list) as a prompt should render it.

        Args:
            opts: ``omit_last_message`` replaces the last message of the history with a copy
                whose text is ``None``; ``to_message_id`` ends the list after the message with
                that id, or keeps the whole history when no message has it.
        """
        opts = opts or {}
        omit_last = opts.get("omit_last_message", False)
        to_message_id = opts.get("to_message_id")
        last_index = len(self.chat_contents) - 1
        contents: list[ChatContent] = []
        for index, content in enumerate(self.chat_contents):
            if omit_last and index == last_index:
                # A copy: the stored message must keep its text.
                contents.append(
                    ChatContent(
                        content.role, None, content.message_id, is_requester=content.is_requester
                    )
                )
            else:
                contents.append(content)
            if to_message_id is not None and content.message_id == to_message_id:
                break
        return contents

    def find_chat_content_by_message_id(self, message_id: str | None) -> ChatContent | None:
        """Return the first message with this id, or ``None`` (always ``None`` for ``None``)."""
        if message_id is None:
            return None
        for content in self.chat_contents:
            if content.message_id == message_id:
                return content
        return None

    def get_turn(self) -> int:
        """Return the number of user messages."""
        return len(self.requester_messages)

    def get_requester_last_msg(self) -> str | None:
        """Return the text of the last user message, ``None`` if there is none."""
        return self.requester_messages[-1].message if self.requester_messages else None

    def get_responder_last_msg(self) -> str | None:
        """Return the text of the last model message, ``None`` if there is none."""
        return self.responder_messages[-1].message if self.responder_messages else None

    def is_empty(self) -> bool:
        """Return whether the history has no message."""
        return not self.chat_contents

    # -- changing the end of the history -----------------------------------------------------

    def clear_last_responder_message(self) -> None:
        """Set the text of the last message to ``None`` if the model wrote it (for regenerate).

        Does nothing when the history is empty or ends with a user message. The message id
        is kept.
        """
        if self._last_is(False):
            self.chat_contents[-1].message = None

    def remove_last_requester_msg(self) -> ChatContent | None:
        """Remove the last message if the user wrote it; return it, or ``None`` if not."""
        return self._pop_last(True)

    def remove_last_responder_msg(self) -> ChatContent | None:
        """Remove the last message if the model wrote it; return it, or ``None`` if not."""
        return self._pop_last(False)

    def _pop_last(self, is_requester: bool) -> ChatContent | None:
        if not self._last_is(is_requester):
            return None
        # The last message of the history is also the last of its side list.
        self._side(is_requester).pop()
        return self.chat_contents.pop()

    def set_responder_last_msg(self, message: str | None) -> None:
        """Replace the text of the last message, which must be the model's.

        Raises:
            LocalProtocolError: the history is empty or ends with a user message.
        """
        self._responder_last("set the reply text").message = message

    def set_responder_last_msg_id(self, message_id: str | None) -> None:
        """Replace the id of the last message, which must be the model's.

        Raises:
            LocalProtocolError: the history is empty or ends with a user message.
        """
        self._responder_last("set the reply id").message_id = message_id

    def _responder_last(self, action: str) -> ChatContent:
        # The original wrote chat_contents[-1] blindly and so could overwrite the user's text.
        if not self._last_is(False):
            where = "the history is empty" if self.is_empty() else "it ends with a user message"
            raise LocalProtocolError(f"cannot {action}: {where}")
        return self.chat_contents[-1]

    def clear(self) -> None:
        """Remove every message; the system text, role names and chat mode stay."""
        self.chat_contents.clear()
        self.responder_messages.clear()
        self.requester_messages.clear()

    # -- rendering ---------------------------------------------------------------------------

    def get_skip_len(self, omit_last_message: bool = False) -> int:
        """Return ``len(create_prompt(...))``: where the reply starts in the echoed text."""
        return len(self.create_prompt({"omit_last_message": omit_last_message}))

    def replace_string(
        self, text: str | None, pairs: Iterable[tuple[str, str]] | None
    ) -> str | None:
        """Apply the ``(old, new)`` pairs in order; ``None`` text or pairs change nothing."""
        if text is None or pairs is None:
            return text
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    def get_replacement_when_input(self) -> Replacements | None:
        """Return the replacements applied to user messages as they are added (default none)."""
        return None

    def get_replacement_when_output(self) -> Replacements | None:
        """Return the replacements applied to the model's output as it streams (default none)."""
        return None

    @abc.abstractmethod
    def get_stop_strs(self) -> list[str]:
        """Return the strings that end a reply (used in chat mode only)."""

    @abc.abstractmethod
    def create_prompt(self, opts: PromptOptions | None = None) -> str:
        """Render the history (see :meth:`get_contents` for ``opts``) into the model's prompt."""

    @abc.abstractmethod
    def build_initial_prompt(self, chat_prompt: AbstractChatPrompt) -> None:
        """Add few-shot or other initial context to ``chat_prompt``, a new conversation."""

    def _render(self, opts: PromptOptions | None, *, closed: str, open_: str) -> str:
        """Render ``system`` plus each message, for presets made of role-tagged lines.

        Args:
            opts: as for :meth:`get_contents`.
            closed: format of a message with text, with ``{role}`` and ``{message}`` fields.
            open_: format of a message without text (``None``), with a ``{role}`` field.
        """
        if not self.chat_mode:
            return self.get_requester_last_msg() or ""
        parts = [self.system]
        for content in self.get_contents(opts):
            if not content.role:
                continue  # as in the original: a message with no role name is not rendered
            if content.message is None:
                parts.append(open_.format(role=content.role))
            else:
                parts.append(closed.format(role=content.role, message=content.message))
        return "".join(parts)

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict from which :meth:`from_dict` rebuilds this prompt."""
        return {
            "system": self.system,
            "requester": self.requester,
            "responder": self.responder,
            "chat_mode": self.chat_mode,
            "contents": [content.to_dict() for content in self.chat_contents],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Self:
        """Rebuild a prompt of this class from :meth:`to_dict` output.

        Missing keys keep the values ``cls()`` sets. The original's format (``chat_contents``,
        no ``is_requester``) loads too; its messages get their side from their role name as
        the original decided it (the responder's role wins a tie).

        Raises:
            LocalProtocolError: the data has the wrong shape or types.
        """
        prompt = cls()
        prompt.system = _check_str("'system'", data.get("system", prompt.system))
        prompt.requester = _check_str("'requester'", data.get("requester", prompt.requester))
        prompt.responder = _check_str("'responder'", data.get("responder", prompt.responder))
        prompt.chat_mode = _check_bool("'chat_mode'", data.get("chat_mode", prompt.chat_mode))
        items = data["contents"] if "contents" in data else data.get("chat_contents", [])
        if not isinstance(items, list | tuple):
            raise LocalProtocolError(f"'contents' must be a list, got {items!r}")
        prompt.clear()
        for item in items:
            if not isinstance(item, Mapping):
                raise LocalProtocolError(f"a chat content must be a mapping, got {item!r}")
            content = ChatContent.from_dict(item)
            if "is_requester" not in item:
                content.is_requester = (
                    content.role != prompt.responder and content.role == prompt.requester
                )
            prompt._append(content)
        return prompt


class ChatPromptTogetherRedPajamaINCITEChat(AbstractChatPrompt):
    """togethercomputer/RedPajama-INCITE-Chat-3B-v1.

    Format: ``system`` then ``"<human>: text\\n"`` per message, an open message as
    ``"<bot>:"``. For example ``"<human>: Who is Alan Turing\\n<bot>:"``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.set_requester("<human>")
        self.set_responder("<bot>")

    def get_stop_strs(self) -> list[str]:
        """``<|endoftext|>`` and ``"\\n<"`` (the model starting a new turn) in chat mode."""
        if not self.chat_mode:
            return []
        return ["<|endoftext|>", "\n<"]

    def create_prompt(self, opts: PromptOptions | None = None) -> str:
        """Render the prompt; see the class docstring for the format."""
        return self._render(opts, closed="{role}: {message}\n", open_="{role}:")

    def build_initial_prompt(self, chat_prompt: AbstractChatPrompt) -> None:
        """No initial context."""


class ChatPromptRinnaJapaneseGPTNeoxInst(AbstractChatPrompt):
    """rinna/japanese-gpt-neox-3.6b-instruction-sft (and its -ppo sibling).

    Format: ``system`` then ``"ユーザー: text<NL>"`` per message, an open message as
    ``"システム: "`` (with a trailing space). The model writes newlines as ``<NL>``: user
    newlines are replaced on input and ``<NL>`` is replaced back on output. Its tokenizer
    would append ``</s>`` to the prompt, so special tokens are not added.
    """

    add_special_tokens = False

    def __init__(self) -> None:
        super().__init__()
        self.set_requester("ユーザー")
        self.set_responder("システム")

    def get_stop_strs(self) -> list[str]:
        """None: the model ends its turn with its end-of-text token."""
        return []

    def get_replacement_when_input(self) -> Replacements | None:
        """Newlines become ``<NL>``."""
        return [("\n", "<NL>")]

    def get_replacement_when_output(self) -> Replacements | None:
        """``<NL>`` becomes a newline."""
        return [("<NL>", "\n")]

    def create_prompt(self, opts: PromptOptions | None = None) -> str:
        """Render the prompt; see the class docstring for the format."""
        return self._render(opts, closed="{role}: {message}<NL>", open_="{role}: ")

    def build_initial_prompt(self, chat_prompt: AbstractChatPrompt) -> None:
        """No initial context."""
