"""The history of one chat: a tree of messages with one current path, one turn in flight at
most, regenerate, edit, versions, feedback, truncation to the context, and a lossless JSON
form for session stores.

A turn is a user message and the reply streamed into it. While a turn is in flight every
other change (a second turn, regenerate, edit, a switch of versions, clear) is refused with
:class:`~chatstream.core.errors.TurnInFlightError`: two browser tabs on one session can
no longer interleave their turns, as they could in the original.

Every message knows the message before it (its ``parent``), so the messages form a tree.
The model sees one path through it, from a first user message to the newest message of the
branch in use: :attr:`Conversation.messages`. The other messages (replies replaced by a
regenerate, user messages replaced by an edit, and everything that followed them) are kept
off the path in :attr:`Conversation.archived`: feedback on them still works, and
:meth:`Conversation.switch_to` makes any of them current again. The *versions* of a message
are the messages with the same parent, in the order they were made ("‹ 1 / 2 ›" in a UI).

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

#: Version of the JSON layout written by :meth:`Conversation.to_json` (1: a list of messages
#: and the replies replaced by a regenerate, read still; 2: the tree).
_JSON_VERSION = 2


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
    #: The message before this one in its branch; None for a first user message.
    parent: str | None = None
    #: The order in which the conversation made its messages (orders versions).
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "role": self.role.value,
            "content": self.content,
            "status": self.status.value,
            "seq": self.seq,
        }
        if self.parent is not None:
            out["parent"] = self.parent
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
            parent=data.get("parent"),
            seq=int(data.get("seq", 0)),
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
    """The messages of one chat: the current path, oldest first, and the rest of the tree."""

    #: The current path: the messages the model sees, oldest first.
    messages: list[Message] = field(default_factory=list)
    #: Every message off the current path (other versions and what followed them), kept so
    #: that feedback on them still works and a switch can bring them back. Creation order.
    archived: list[Message] = field(default_factory=list)
    #: Text that replaces the prompt class's system text for this conversation (None: the
    #: prompt class's own).
    system: str | None = None
    #: A name a user gave this conversation (None: named after its first message).
    title: str | None = None
    # How to undo the turn in flight (abort_turn): the user message it added, and the
    # messages it took off the path (a regenerate's reply, an edit's branch). Not part of the
    # JSON form: a turn does not outlive its process.
    _added_user: Message | None = field(default=None, init=False, repr=False, compare=False)
    _replaced: list[Message] = field(default_factory=list, init=False, repr=False, compare=False)

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
        parent = self.messages[-1].id if self.messages else None
        user = self._new_message(user_message_id, Role.USER, user_input, parent=parent)
        self.messages.append(user)
        reply = self._open_reply(reply_id, user_message_id)
        self._added_user, self._replaced = user, []
        return reply

    def start_regenerate(self, *, reply_id: str) -> Message:
        """Answer the last user message again with a new reply id; return the reply.

        The reply it replaces (if any) goes off the path as an earlier version, and its id
        stays findable.

        Raises:
            NothingToRegenerateError: there is no user message to answer.
        """
        self._check_idle()
        self._check_new_ids(reply_id)
        if not self.messages:
            raise NothingToRegenerateError("there is no user message to answer again")
        replaced = []
        if self.messages[-1].role is Role.ASSISTANT:
            replaced = [self.messages.pop()]
            self._archive(replaced)
        reply = self._open_reply(reply_id, self.messages[-1].id)
        self._added_user, self._replaced = None, replaced
        return reply

    def start_edit(
        self, message_id: str, user_input: str, *, user_message_id: str, reply_id: str
    ) -> Message:
        """Send a new version of a user message on the current path, and answer it; return
        the reply. The message and everything after it go off the path as the earlier
        version's branch.

        Raises:
            UnknownMessageError: no user message with this id on the current path.
        """
        self._check_idle()
        index = self._path_index(message_id)
        if index is None or self.messages[index].role is not Role.USER:
            raise UnknownMessageError(f"no user message {message_id!r} on the current path")
        self._check_new_ids(user_message_id, reply_id)
        replaced = self.messages[index:]
        del self.messages[index:]
        self._archive(replaced)
        user = self._new_message(user_message_id, Role.USER, user_input, parent=replaced[0].parent)
        self.messages.append(user)
        reply = self._open_reply(reply_id, user_message_id)
        self._added_user, self._replaced = user, replaced
        return reply

    def abort_turn(self) -> None:
        """Undo the turn in flight as if it never started (it was refused before it ran:
        queue full, prompt too long). The history is as it was before the turn."""
        self.messages.remove(self.reply)
        if self._added_user is not None:
            self.messages.remove(self._added_user)
        for message in self._replaced:
            self.archived.remove(message)
        self.messages.extend(self._replaced)
        self._added_user, self._replaced = None, []

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

    # ------------------------------------------------------------------ versions

    def versions(self, message_id: str) -> list[Message]:
        """The versions of a message (itself included): the messages with the same parent,
        in the order they were made.

        Raises:
            UnknownMessageError: no such message.
        """
        parent = self.find(message_id).parent
        return sorted((m for m in self._all_messages() if m.parent == parent), key=lambda m: m.seq)

    def switch_to(self, message_id: str) -> None:
        """Make the branch through this message current: its earlier messages, it, and
        below it the newest version at each step. Nothing changes if it is on the path.

        Raises:
            UnknownMessageError: no such message.
            TurnInFlightError: a turn is in flight.
        """
        self._check_idle()
        target = self.find(message_id)
        if target in self.messages:
            return
        path = self._branch_to(target)
        children: dict[str | None, list[Message]] = {}
        for message in self._all_messages():
            children.setdefault(message.parent, []).append(message)
        while below := children.get(path[-1].id):
            path.append(max(below, key=lambda m: m.seq))
        on_path = {m.id for m in path}
        everything = sorted(self._all_messages(), key=lambda m: m.seq)
        self.messages[:] = path
        self.archived[:] = [m for m in everything if m.id not in on_path]

    # ------------------------------------------------------------------ limits

    def trim(self, max_messages: int) -> None:
        """Keep at most ``max_messages`` on the path, dropping whole oldest exchanges (a
        user message with its reply) and every branch that grew from them; keep at most as
        many off the path, dropping the oldest branches first. The newest exchange stays,
        and nothing changes while a turn is in flight."""
        if self.in_flight:
            return
        path = self.messages
        newest = max((i for i, m in enumerate(path) if m.role is Role.USER), default=0)
        cut = 0
        while len(path) - cut > max_messages and cut < newest:
            cut += 1
            # Take the replies with their question: the model never sees a reply without one.
            while cut < newest and path[cut].role is Role.ASSISTANT:
                cut += 1
        if cut:
            self.drop_oldest(cut)
        while len(self.archived) > max_messages:
            self._drop_branch(self.archived[0])

    def drop_oldest(self, count: int) -> None:
        """Drop the first ``count`` messages of the path (callers cut before a user message)
        and every branch that grew from them: the next message becomes the first."""
        del self.messages[:count]
        if not self.messages:
            self.archived.clear()
            return
        root = self.messages[0]
        root.parent = None
        # Off the path, keep what grew below the new first message.
        by_id = {m.id: m for m in self._all_messages()}
        kept = []
        for message in self.archived:
            ancestor: Message | None = message
            while ancestor is not None and ancestor is not root:
                ancestor = by_id.get(ancestor.parent or "")
            if ancestor is root:
                kept.append(message)
        self.archived[:] = kept

    # ------------------------------------------------------------------ lookups

    def find(self, message_id: str) -> Message:
        """The message (on the path or off it) with this id.

        Raises:
            UnknownMessageError: no such message.
        """
        for message in self._all_messages():
            if message.id == message_id:
                return message
        raise UnknownMessageError(f"no message with id {message_id!r}")

    def history_until(self, message_id: str) -> list[Message]:
        """The messages up to and including this one, as the model saw them: its branch."""
        return self._branch_to(self.find(message_id))

    def set_feedback(self, message_id: str, *, is_like: bool, data: Any = None) -> Message:
        """Record a like or dislike on any message, on the path or off it."""
        message = self.find(message_id)
        message.feedback = Feedback(is_like=is_like, data=data)
        return message

    def adopt_feedback(self, other: Conversation) -> None:
        """Take the feedback ``other`` has on messages both have (on or off the path): a
        later copy of this conversation, saved by another request while a turn ran here."""
        theirs = {m.id: m.feedback for m in other._all_messages()}
        for message in self._all_messages():
            feedback = theirs.get(message.id)
            if feedback is not None:
                message.feedback = feedback

    def default_title(self) -> str:
        """The user's title, else the first line of the first user message (80 characters
        at most), else ""."""
        if self.title is not None:
            return self.title
        first = next((m for m in self.messages if m.role is Role.USER), None)
        line = first.content.strip().split("\n", 1)[0] if first is not None else ""
        return line if len(line) <= 80 else line[:79].rstrip() + "…"

    # ------------------------------------------------------------------ prompts

    def render(
        self,
        prompt_factory: Callable[[], AbstractChatPrompt],
        *,
        encode: Callable[[str], Sequence[int]],
        budget: int,
    ) -> RenderedPrompt:
        """Render the prompt for the reply in flight, dropping whole oldest turns to fit.

        The prompt class's initial context (``build_initial_prompt``) and the system text
        (this conversation's :attr:`system`, else the prompt class's) are never dropped,
        and a turn is never cut in half. Turns whose reply failed are left out: the model
        should not see a broken exchange.

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
            prompt = self._new_prompt(prompt_factory)
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
        out: dict[str, Any] = {
            "version": _JSON_VERSION,
            "messages": [m.to_json() for m in self.messages],
            "archived": [m.to_json() for m in self.archived],
        }
        if self.system is not None:
            out["system"] = self.system
        if self.title is not None:
            out["title"] = self.title
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Conversation:
        """Rebuild a conversation from :meth:`to_json`'s output, or from version 1's (a
        path and the replies a regenerate replaced, which become earlier versions).

        Raises:
            LocalProtocolError: the data was written by an unknown version.
        """
        version = data.get("version")
        if version not in (1, _JSON_VERSION):
            raise LocalProtocolError(f"unsupported conversation version {version!r}")
        messages = [Message.from_json(m) for m in data["messages"]]
        archived = [Message.from_json(m) for m in data.get("archived", [])]
        if version == 1:
            # Replaced replies came before the reply on the path that answers the same
            # question: number them first.
            for seq, message in enumerate([*archived, *messages]):
                message.seq = seq
            for before, message in zip([None, *messages], messages, strict=False):
                message.parent = None if before is None else before.id
            for message in archived:
                message.parent = message.in_reply_to
        return cls(
            messages=messages,
            archived=archived,
            system=data.get("system"),
            title=data.get("title"),
        )

    # ------------------------------------------------------------------ internals

    def _check_idle(self) -> None:
        if self.in_flight:
            raise TurnInFlightError("a reply is already being generated for this conversation")

    def _check_new_ids(self, *ids: str) -> None:
        known = {m.id for m in self._all_messages()}
        if len(set(ids)) != len(ids) or known.intersection(ids):
            raise LocalProtocolError(f"message ids must be new and distinct: {ids!r}")

    def _new_message(
        self,
        message_id: str,
        role: Role,
        content: str,
        *,
        parent: str | None,
        status: MessageStatus = MessageStatus.COMPLETE,
    ) -> Message:
        seq = 1 + max((m.seq for m in self._all_messages()), default=-1)
        return Message(
            id=message_id,
            role=role,
            content=content,
            status=status,
            in_reply_to=parent if role is Role.ASSISTANT else None,
            parent=parent,
            seq=seq,
        )

    def _open_reply(self, reply_id: str, user_message_id: str) -> Message:
        reply = self._new_message(
            reply_id,
            Role.ASSISTANT,
            "",
            parent=user_message_id,
            status=MessageStatus.STREAMING,
        )
        self.messages.append(reply)
        return reply

    def _all_messages(self) -> Iterator[Message]:
        yield from self.messages
        yield from self.archived

    def _archive(self, messages: list[Message]) -> None:
        # Off the path, in the order they were made.
        self.archived.extend(messages)
        self.archived.sort(key=lambda m: m.seq)

    def _path_index(self, message_id: str) -> int | None:
        for index, message in enumerate(self.messages):
            if message.id == message_id:
                return index
        return None

    def _branch_to(self, target: Message) -> list[Message]:
        # The message and those before it, first to last, by their parents.
        by_id = {m.id: m for m in self._all_messages()}
        branch = [target]
        while branch[-1].parent is not None:
            before = by_id.get(branch[-1].parent or "")
            if before is None or len(branch) > len(by_id):
                # Only a hand-made or corrupted stored history gets here.
                raise LocalProtocolError(f"message {target.id!r} has lost its place")
            branch.append(before)
        branch.reverse()
        return branch

    def _drop_branch(self, top: Message) -> None:
        # An off-path message and everything that grew from it.
        gone = {top.id}
        for message in sorted(self.archived, key=lambda m: m.seq):
            if message.parent in gone:
                gone.add(message.id)
        self.archived[:] = [m for m in self.archived if m.id not in gone]

    def _new_prompt(self, prompt_factory: Callable[[], AbstractChatPrompt]) -> AbstractChatPrompt:
        prompt = prompt_factory()
        prompt.build_initial_prompt(prompt)
        if self.system is not None:
            prompt.set_system(self.system)
        return prompt

    def render_history(self, prompt_factory: Callable[[], AbstractChatPrompt]) -> str | None:
        """The whole history as the prompt class renders it, without truncation (what
        ``get_prompt`` shows); the turn in flight, if any, ends it with an open reply.
        None for an empty conversation."""
        if not self.messages:
            return None
        prompt = self._new_prompt(prompt_factory)
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
