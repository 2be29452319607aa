"""Several conversations of one user: each by id, the current one, the order they were last
used in, how many are kept, what a session may hold, and what a turn's save keeps of the
changes other requests made while it ran.

Ids are ``"1"``, ``"2"``, ... in the order the conversations were made, never reused: they
only have to be unique within their owner (a browser session), and counting draws nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Self

from .conversation import Conversation, Role
from .errors import LocalProtocolError

__all__ = ["MAX_CONVERSATIONS", "Conversations", "stored_bytes"]

#: At most this many conversations are kept: a new one beyond it forgets the least recently
#: used (as the history limits forget the oldest exchanges).
MAX_CONVERSATIONS = 50


class Conversations:
    """Conversations by id, least recently used first, one of them current.

    Attributes:
        conversations: the conversations by id, least recently used first.
        current_id: the conversation a request that names none uses.
        next_number: the number of the next conversation's id.
    """

    __slots__ = ("conversations", "current_id", "next_number")

    def __init__(self, conversation: Conversation | None = None) -> None:
        self.conversations: dict[str, Conversation] = {
            "1": conversation if conversation is not None else Conversation()
        }
        self.current_id = "1"
        self.next_number = 2

    @property
    def conversation(self) -> Conversation:
        """The current conversation."""
        return self.conversations[self.current_id]

    @conversation.setter
    def conversation(self, conversation: Conversation) -> None:
        self.conversations[self.current_id] = conversation

    def get(self, conversation_id: str | None) -> Conversation | None:
        """The conversation with this id (None: the current one), or None if there is none."""
        return self.conversations.get(
            self.current_id if conversation_id is None else conversation_id
        )

    def new_conversation(self) -> str:
        """Add an empty conversation, make it current, and return its id. Beyond
        :data:`MAX_CONVERSATIONS` the least recently used idle one is forgotten."""
        conversation_id = str(self.next_number)
        self.next_number += 1
        self.conversations[conversation_id] = Conversation()
        self.current_id = conversation_id
        idle = [k for k, c in self.conversations.items() if not c.in_flight]
        while len(self.conversations) > MAX_CONVERSATIONS and idle:
            del self.conversations[idle.pop(0)]
        return conversation_id

    def touch(self, conversation_id: str) -> None:
        """Make this conversation the most recently used."""
        self.conversations[conversation_id] = self.conversations.pop(conversation_id)

    def delete(self, conversation_id: str) -> None:
        """Forget a conversation; if it was current, the most recently used other one is
        current now (a new empty one if it was the last)."""
        del self.conversations[conversation_id]
        if not self.conversations:
            self.new_conversation()
        elif conversation_id == self.current_id:
            self.current_id = next(reversed(self.conversations))

    def in_flight(self) -> bool:
        """Whether any of the conversations has a turn in flight."""
        return any(c.in_flight for c in self.conversations.values())

    def adopt_others(
        self, latest: Conversations, conversation_id: str, current_before: str
    ) -> None:
        """Take ``latest`` (a later copy, saved by other requests while a turn ran here)
        except for the messages of the conversation the turn ran in: their feedback, titles,
        system prompts and other conversations. The turn's conversation stays current unless
        another request chose one meanwhile (``latest``'s current conversation is no longer
        ``current_before``, the one when the turn began)."""
        ours = self.conversations[conversation_id]
        theirs = latest.conversations.get(conversation_id)
        if theirs is not None:
            ours.adopt_feedback(theirs)
            ours.title, ours.system = theirs.title, theirs.system
        conversations = dict(latest.conversations)
        conversations[conversation_id] = ours
        self.conversations = conversations
        if latest.current_id != current_before and latest.current_id in conversations:
            self.current_id = latest.current_id
        self.next_number = max(self.next_number, latest.next_number)

    # ------------------------------------------------------------------ limits

    def has_reply(self) -> bool:
        """Whether any conversation holds a reply: more than a first turn or parameters."""
        return any(
            m.role is Role.ASSISTANT for c in self.conversations.values() for m in c.messages
        )

    def stored_bytes(self) -> int:
        """What the conversations hold, in bytes of UTF-8 (see :func:`stored_bytes`)."""
        return sum(stored_bytes(c) for c in self.conversations.values())

    def trim(self, max_messages: int) -> None:
        """Bound each conversation's history (:meth:`Conversation.trim`)."""
        for conversation in self.conversations.values():
            conversation.trim(max_messages)

    def shrink(self, limit: int, *, other_bytes: int = 0) -> None:
        """Drop what is oldest until :meth:`stored_bytes` plus ``other_bytes`` fits ``limit``:
        the oldest exchange of the largest conversation first, so that one long conversation
        shortens before any other goes; whole conversations (least recently used first, never
        the current one) only once none can shorten. Never while a conversation's turn is in
        flight, never a conversation's last exchange."""
        while other_bytes + self.stored_bytes() > limit:
            idle = [c for c in self.conversations.values() if not c.in_flight]
            for conversation in sorted(idle, key=stored_bytes, reverse=True):
                before = len(conversation.messages) + len(conversation.archived)
                conversation.trim(max(1, len(conversation.messages) - 1))
                if len(conversation.messages) + len(conversation.archived) < before:
                    break
            else:
                others = [
                    key
                    for key, c in self.conversations.items()
                    if key != self.current_id and not c.in_flight
                ]
                if not others:
                    return
                del self.conversations[others[0]]

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_json` gives back equal conversations."""
        return {
            "conversations": [
                {"id": key, **conversation.to_json()}
                for key, conversation in self.conversations.items()
            ],
            "current": self.current_id,
            "next": self.next_number,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild conversations from :meth:`to_json`'s output.

        Raises:
            LocalProtocolError: the current conversation is not among them.
        """
        out = cls()
        out.conversations = {str(c["id"]): Conversation.from_json(c) for c in data["conversations"]}
        out.current_id = str(data["current"])
        out.next_number = int(data["next"])
        if out.current_id not in out.conversations:
            raise LocalProtocolError("the current conversation is missing")
        return out


def stored_bytes(conversation: Conversation) -> int:
    """What a conversation holds, in bytes of UTF-8: its messages (every version, 64 bytes
    each for the id, role and status around the text), their feedback data as JSON, its
    title and system prompt."""
    size = 64 + len((conversation.system or "").encode())
    size += len((conversation.title or "").encode())
    for message in (*conversation.messages, *conversation.archived):
        size += len(message.content.encode()) + 64
        if message.feedback is not None:
            size += len(json.dumps(message.feedback.data, ensure_ascii=False).encode())
    return size
