"""The history of one chat: messages with ids, one turn in flight at most, regenerate,
feedback, truncation to the context, and a lossless JSON form for session stores.

A turn is a user message and the reply streamed into it. While a turn is in flight every
other change (a second turn, regenerate, clear) is refused with
:class:`~chatstream.core.errors.TurnInFlightError`: two browser tabs on one session can
no longer interleave their turns, as they could in the original.

A regenerated reply replaces the last one in the history the model sees; the old reply is
archived, so feedback on its id still works.

Ids are given by the caller (the adapter draws random ones); the core draws nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    LocalProtocolError,
    NothingToRegenerateError,
    PromptTooLongError,
    TurnInFlightError,
    UnknownMessageError,
)
from .prompts import AbstractChatPrompt

__all__ = [
    "Conversation",
    "Feedback",
    "Message",
    "MessageStatus",
    "RenderedPrompt",
    "Role",
]

#: Version of the JSON layout written by :meth:`Conversation.to_json`.
_JSON_VERSION = 1


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(enum.StrEnum):
    """Where a message stands."""

    #: Final text.
    COMPLETE = "complete"
    #: A reply being generated now.
    STREAMING = "streaming"
    #: A reply cut short by a cancel (client gone); the partial text is kept.
    CANCELLED = "cancelled"
    #: A reply that failed; the partial text is kept for display, not for the model.
    ERROR = "error"


@dataclass(slots=True, kw_only=True)
class Feedback:
    """A like or dislike on a message, with free data from the client (a form, a note)."""

    is_like: bool
    data: Any = None


@dataclass(slots=True, kw_only=True)
class Message:
    id: str
    role: Role
    content: str
    status: MessageStatus = MessageStatus.COMPLETE
    #: The engine's finish reason for a reply ("stop", "length", ...).
    finish_reason: str | None = None
    #: For a reply: the id of the user message it answers.
    in_reply_to: str | None = None
    feedback: Feedback | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "role": self.role.value,
            "content": self.content,
            "status": self.status.value,
        }
        if self.finish_reason is not None:
            out["finish_reason"] = self.finish_reason
        if self.in_reply_to is not None:
            out["in_reply_to"] = self.in_reply_to
        if self.feedback is not None:
            out["feedback"] = {"is_like": self.feedback.is_like, "data": self.feedback.data}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Message:
        feedback = data.get("feedback")
        return cls(
            id=str(data["id"]),
            role=Role(data["role"]),
            content=str(data["content"]),
            status=MessageStatus(data.get("status", MessageStatus.COMPLETE)),
            finish_reason=data.get("finish_reason"),
            in_reply_to=data.get("in_reply_to"),
            feedback=None
            if feedback is None
            else Feedback(is_like=bool(feedback["is_like"]), data=feedback.get("data")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedPrompt:
    """A prompt ready for the model, with what the prompt class says about decoding it."""

    text: str
    token_ids: tuple[int, ...]
    #: Oldest turns left out so that the prompt fits.
    dropped_turns: int
    stop_strings: tuple[str, ...]
    replacements: tuple[tuple[str, str], ...]
    strip_reply: bool
    add_special_tokens: bool | None


@dataclass(slots=True)
class Conversation:
    """The messages of one chat, oldest first."""

    messages: list[Message] = field(default_factory=list)
    #: Replies replaced by a regenerate, kept so that feedback on them still works.
    archived: list[Message] = field(default_factory=list)
    # How to undo the turn in flight (abort_turn): the user message it added, or the reply
    # a regenerate archived. Not part of the JSON form: a turn does not outlive its process.
    _added_user: Message | None = field(default=None, init=False, repr=False, compare=False)
    _replaced: Message | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ turns

    @property
    def in_flight(self) -> bool:
        """True while a reply is being generated."""
        return bool(self.messages) and self.messages[-1].status is MessageStatus.STREAMING

    @property
    def reply(self) -> Message:
        """The reply in flight.

        Raises:
            LocalProtocolError: no turn is in flight.
        """
        if not self.in_flight:
            raise LocalProtocolError("no turn is in flight")
        return self.messages[-1]

    def start_turn(self, user_input: str, *, user_message_id: str, reply_id: str) -> Message:
        """Add a user message and an empty reply to stream into; return the reply."""
        self._check_idle()
        self._check_new_ids(user_message_id, reply_id)
        user = Message(id=user_message_id, role=Role.USER, content=user_input)
        self.messages.append(user)
        reply = self._open_reply(reply_id, user_message_id)
        self._added_user, self._replaced = user, None
        return reply

    def start_regenerate(self, *, reply_id: str) -> Message:
        """Answer the last user message again with a new reply id; return the reply.

        The reply it replaces (if any) is archived, and its id stays findable.

        Raises:
            NothingToRegenerateError: there is no user message to answer.
        """
        self._check_idle()
        self._check_new_ids(reply_id)
        users = [m for m in self.messages if m.role is Role.USER]
        if not users:
            raise NothingToRegenerateError("there is no user message to answer again")
        replaced = None
        if self.messages[-1].role is Role.ASSISTANT:
            replaced = self.messages.pop()
            self.archived.append(replaced)
        reply = self._open_reply(reply_id, self.messages[-1].id)
        self._added_user, self._replaced = None, replaced
        return reply

    def abort_turn(self) -> None:
        """Undo the turn in flight as if it never started (it was refused before it ran:
        queue full, prompt too long). The history is as it was before the turn."""
        self.messages.remove(self.reply)
        if self._added_user is not None:
            self.messages.remove(self._added_user)
        if self._replaced is not None:
            self.archived.remove(self._replaced)
            self.messages.append(self._replaced)
        self._added_user = self._replaced = None

    def append_reply(self, text: str) -> None:
        """Stream more text into the reply in flight."""
        self.reply.content += text

    def finish_reply(self, finish_reason: str) -> Message:
        """End the turn in flight; "cancelled" and "error" keep the partial text."""
        reply = self.reply
        reply.finish_reason = finish_reason
        if finish_reason == "cancelled":
            reply.status = MessageStatus.CANCELLED
        elif finish_reason == "error":
            reply.status = MessageStatus.ERROR
        else:
            reply.status = MessageStatus.COMPLETE
        return reply

    def clear(self) -> None:
        """Forget every message (feedback included)."""
        self._check_idle()
        self.messages.clear()
        self.archived.clear()

    # ------------------------------------------------------------------ lookups

    def find(self, message_id: str) -> Message:
        """The message (current or archived) with this id.

        Raises:
            UnknownMessageError: no such message.
        """
        for message in self._all_messages():
            if message.id == message_id:
                return message
        raise UnknownMessageError(f"no message with id {message_id!r}")

    def history_until(self, message_id: str) -> list[Message]:
        """The messages up to and including this one, as the model saw them.

        For an archived reply: the history up to the user message it answered, then it.
        """
        target = self.find(message_id)
        anchor = target.in_reply_to if target in self.archived else target.id
        for index, message in enumerate(self.messages):
            if message.id == anchor:
                return [*self.messages[: index + 1], *([target] if anchor != target.id else [])]
        # Only a hand-made or corrupted stored history gets here: a regenerate keeps the
        # user message, and clear drops the archive with it.
        raise LocalProtocolError(f"message {message_id!r} has lost its place")

    def set_feedback(self, message_id: str, *, is_like: bool, data: Any = None) -> Message:
        """Record a like or dislike on any message, current or archived."""
        message = self.find(message_id)
        message.feedback = Feedback(is_like=is_like, data=data)
        return message

    def adopt_feedback(self, other: Conversation) -> None:
        """Take the feedback ``other`` has on messages both have (current or archived): a
        later copy of this conversation, saved by another request while a turn ran here."""
        theirs = {m.id: m.feedback for m in (*other.messages, *other.archived)}
        for message in (*self.messages, *self.archived):
            feedback = theirs.get(message.id)
            if feedback is not None:
                message.feedback = feedback

    # ------------------------------------------------------------------ prompts

    def render(
        self,
        prompt_factory: Callable[[], AbstractChatPrompt],
        *,
        encode: Callable[[str], Sequence[int]],
        budget: int,
    ) -> RenderedPrompt:
        """Render the prompt for the reply in flight, dropping whole oldest turns to fit.

        The prompt class's initial context (``build_initial_prompt``) and system text are
        never dropped, and a turn is never cut in half. Turns whose reply failed are left
        out: the model should not see a broken exchange.

        Args:
            prompt_factory: makes a fresh prompt object (usually the prompt class itself).
            encode: text to token ids, as the model will see them.
            budget: tokens the prompt may use (``context_len - max_new_tokens``).

        Raises:
            PromptTooLongError: the current turn alone does not fit.
        """
        reply = self.reply
        turns = self._turns_for_model(self.messages[:-2])

        def attempt(dropped: int) -> tuple[AbstractChatPrompt, str, tuple[int, ...]]:
            prompt = prompt_factory()
            prompt.build_initial_prompt(prompt)
            if prompt.is_chat_mode_enabled():
                _add_turns(prompt, turns[dropped:])
                user = self.find(reply.in_reply_to or "")
                prompt.add_requester_msg(user.content, message_id=user.id)
                prompt.add_responder_msg(None, message_id=reply.id)
            else:
                prompt.add_requester_msg(self.find(reply.in_reply_to or "").content)
            text = prompt.create_prompt()
            return prompt, text, tuple(encode(text))

        best = attempt(0)
        if len(best[2]) > budget:
            if not best[0].is_chat_mode_enabled() or not turns:
                raise _too_long(len(best[2]), budget)
            # The fewest oldest turns to drop, by bisection: the prompt only shrinks as
            # turns go, and a long history would otherwise be encoded once per turn.
            best = attempt(len(turns))
            if len(best[2]) > budget:
                raise _too_long(len(best[2]), budget)
            fits, too_long = len(turns), 0
            while fits - too_long > 1:
                middle = (fits + too_long) // 2
                candidate = attempt(middle)
                if len(candidate[2]) <= budget:
                    fits, best = middle, candidate
                else:
                    too_long = middle
            dropped = fits
        else:
            dropped = 0
        prompt, text, token_ids = best
        return RenderedPrompt(
            text=text,
            token_ids=token_ids,
            dropped_turns=dropped,
            stop_strings=tuple(prompt.get_stop_strs()),
            replacements=tuple(prompt.get_replacement_when_output() or ()),
            strip_reply=prompt.strip_reply,
            add_special_tokens=prompt.add_special_tokens,
        )

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_json` gives back an equal conversation."""
        return {
            "version": _JSON_VERSION,
            "messages": [m.to_json() for m in self.messages],
            "archived": [m.to_json() for m in self.archived],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Conversation:
        if data.get("version") != _JSON_VERSION:
            raise LocalProtocolError(f"unsupported conversation version {data.get('version')!r}")
        return cls(
            messages=[Message.from_json(m) for m in data["messages"]],
            archived=[Message.from_json(m) for m in data.get("archived", [])],
        )

    # ------------------------------------------------------------------ internals

    def _check_idle(self) -> None:
        if self.in_flight:
            raise TurnInFlightError("a reply is already being generated for this conversation")

    def _check_new_ids(self, *ids: str) -> None:
        known = {m.id for m in self._all_messages()}
        if len(set(ids)) != len(ids) or known.intersection(ids):
            raise LocalProtocolError(f"message ids must be new and distinct: {ids!r}")

    def _open_reply(self, reply_id: str, user_message_id: str) -> Message:
        reply = Message(
            id=reply_id,
            role=Role.ASSISTANT,
            content="",
            status=MessageStatus.STREAMING,
            in_reply_to=user_message_id,
        )
        self.messages.append(reply)
        return reply

    def _all_messages(self) -> Iterator[Message]:
        yield from self.messages
        yield from self.archived

    def render_history(self, prompt_factory: Callable[[], AbstractChatPrompt]) -> str | None:
        """The whole history as the prompt class renders it, without truncation (what
        ``get_prompt`` shows); the turn in flight, if any, ends it with an open reply.
        None for an empty conversation."""
        if not self.messages:
            return None
        prompt = prompt_factory()
        prompt.build_initial_prompt(prompt)
        finished = self.messages[:-2] if self.in_flight else self.messages
        _add_turns(prompt, self._turns_for_model(finished))
        if self.in_flight:
            user = self.find(self.reply.in_reply_to or "")
            prompt.add_requester_msg(user.content, message_id=user.id)
            prompt.add_responder_msg(None, message_id=self.reply.id)
        return prompt.create_prompt()

    @staticmethod
    def _turns_for_model(messages: list[Message]) -> list[tuple[Message, Message]]:
        # Finished exchanges, oldest first, that the model should see again.
        turns: list[tuple[Message, Message]] = []
        pending_user: Message | None = None
        for message in messages:
            if message.role is Role.USER:
                pending_user = message
            else:
                if pending_user is not None and _shown_to_model(message):
                    turns.append((pending_user, message))
                pending_user = None
        return turns


def _add_turns(prompt: AbstractChatPrompt, turns: list[tuple[Message, Message]]) -> None:
    for user, answer in turns:
        prompt.add_requester_msg(user.content, message_id=user.id)
        # Replies are stored as the user saw them; the model gets its own form back
        # (rinna: newline to <NL>), as the prompt's input replacements define it.
        model_form = prompt.replace_string(answer.content, prompt.get_replacement_when_input())
        prompt.add_responder_msg(model_form, message_id=answer.id)


def _shown_to_model(reply: Message) -> bool:
    # A failed reply, or a cancelled one with no text, would teach the model a broken
    # exchange; a cancelled reply with text is kept, as the user saw it.
    if reply.status is MessageStatus.COMPLETE:
        return True
    return reply.status is MessageStatus.CANCELLED and bool(reply.content)


def _too_long(tokens: int, budget: int) -> PromptTooLongError:
    return PromptTooLongError(
        f"the prompt needs {tokens} tokens even without older turns; the limit is {budget}"
    )
