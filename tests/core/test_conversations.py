"""Tests of several conversations: ids, the current one, use order, the bound on their
number, what a turn's save adopts, byte limits and JSON."""

from __future__ import annotations

import json

import pytest

from chatstream.core.conversation import Conversation
from chatstream.core.conversations import MAX_CONVERSATIONS, Conversations, stored_bytes
from chatstream.core.errors import LocalProtocolError


def finished(turns: int, text: str = "") -> Conversation:
    conversation = Conversation()
    for n in range(turns):
        conversation.start_turn(f"q{n}{text}", user_message_id=f"u{n}", reply_id=f"a{n}")
        conversation.append_reply(f"answer {n}")
        conversation.finish_reply("stop")
    return conversation


def round_trip(conversations: Conversations) -> Conversations:
    return Conversations.from_json(json.loads(json.dumps(conversations.to_json())))


def test_ids_current_and_use_order() -> None:
    chats = Conversations()
    assert list(chats.conversations) == ["1"] and chats.current_id == "1"
    assert not chats.has_reply()
    assert chats.new_conversation() == "2"
    assert chats.current_id == "2" and chats.conversation is chats.conversations["2"]
    chats.conversation = finished(1)
    assert chats.has_reply()
    assert chats.get(None) is chats.get("2") is chats.conversations["2"]
    assert chats.get("9") is None
    chats.touch("1")
    assert list(chats.conversations) == ["2", "1"] and chats.current_id == "2"
    # Deleting the current one: the most recently used other one is current.
    chats.delete("2")
    assert chats.current_id == "1"
    # Deleting the last: a new empty one; ids are never reused.
    chats.delete("1")
    assert list(chats.conversations) == ["3"] and chats.current_id == "3"
    chats.new_conversation()
    chats.delete("3")
    assert chats.current_id == "4"


def test_the_number_of_conversations_is_bounded_sparing_a_turn_in_flight() -> None:
    chats = Conversations()
    chats.conversation.start_turn("q", user_message_id="u", reply_id="a")
    assert chats.in_flight()
    for _ in range(MAX_CONVERSATIONS + 5):
        chats.new_conversation()
    assert len(chats.conversations) == MAX_CONVERSATIONS
    # The least recently used idle ones went; the one with a turn in flight stayed.
    assert "1" in chats.conversations and "2" not in chats.conversations


def test_a_turn_adopts_what_others_saved_meanwhile() -> None:
    mine = Conversations(finished(1))
    mine.conversation.start_turn("more", user_message_id="u9", reply_id="a9")
    mine.conversation.finish_reply("stop")
    latest = Conversations(finished(1))
    latest.conversation.set_feedback("a0", is_like=False)
    latest.conversation.title, latest.conversation.system = "named", "be brief"
    latest.new_conversation()  # chosen meanwhile
    mine.adopt_others(latest, "1", current_before="1")
    assert list(mine.conversations) == ["1", "2"] and mine.current_id == "2"
    ours = mine.conversations["1"]
    assert [m.id for m in ours.messages] == ["u0", "a0", "u9", "a9"]
    assert (ours.title, ours.system) == ("named", "be brief")
    assert ours.find("a0").feedback is not None
    assert mine.next_number == 3
    assert list(latest.conversations["1"].messages) != ours.messages  # latest untouched
    # Nobody chose another: the turn's conversation stays current; one deleted meanwhile
    # comes back with the turn's messages.
    gone = Conversations()
    gone.new_conversation()
    gone.delete("1")
    mine.current_id = "1"
    mine.adopt_others(gone, "1", current_before="2")
    assert mine.current_id == "1" and list(mine.conversations) == ["2", "1"]


def test_shrink_shortens_the_largest_first_then_drops_the_least_recently_used() -> None:
    chats = Conversations(finished(2))
    chats.new_conversation()
    chats.conversation = finished(2)
    chats.new_conversation()
    chats.conversation = finished(20, "z" * 300)
    total = chats.stored_bytes()
    assert total == sum(stored_bytes(c) for c in chats.conversations.values())
    chats.shrink(total - 1000, other_bytes=0)
    assert chats.stored_bytes() <= total - 1000
    assert [len(chats.conversations[k].messages) for k in ("1", "2")] == [4, 4]
    assert chats.conversation.messages[-1].id == "a19"
    # Nothing can shorten any more: the least recently used other conversation goes.
    one_each = stored_bytes(finished(1)) * 2 + stored_bytes(finished(20, "z" * 300)) // 20
    chats.shrink(one_each + 100 - 1, other_bytes=100)
    assert list(chats.conversations) == ["2", "3"]
    assert all(len(c.messages) == 2 for c in chats.conversations.values())
    # Only the current one left, still too big: kept.
    chats.shrink(10)
    assert list(chats.conversations) == ["3"] and len(chats.conversation.messages) == 2


def test_shrink_spares_a_turn_in_flight() -> None:
    chats = Conversations(finished(5))
    chats.conversation.start_turn("q", user_message_id="u", reply_id="a")
    before = chats.to_json()
    chats.shrink(10)
    assert chats.to_json() == before


def test_stored_bytes_counts_text_feedback_title_and_system() -> None:
    conversation = finished(1)
    plain = stored_bytes(conversation)
    assert plain == 64 + 2 * 64 + len(b"q0") + len(b"answer 0")
    conversation.set_feedback("a0", is_like=True, data={"note": "日本"})
    conversation.title, conversation.system = "t", "s"
    assert stored_bytes(conversation) == plain + len('{"note": "日本"}'.encode()) + 2


def test_trim_bounds_every_conversation() -> None:
    chats = Conversations(finished(5))
    chats.new_conversation()
    chats.conversation = finished(3)
    chats.trim(2)
    assert [len(c.messages) for c in chats.conversations.values()] == [2, 2]


def test_json_round_trip() -> None:
    chats = Conversations(finished(2))
    chats.new_conversation()
    chats.conversation.title = "second"
    chats.touch("1")
    restored = round_trip(chats)
    assert restored.to_json() == chats.to_json()
    assert list(restored.conversations) == ["2", "1"] and restored.current_id == "2"
    assert restored.next_number == 3
    broken = chats.to_json() | {"current": "7"}
    with pytest.raises(LocalProtocolError, match="current conversation is missing"):
        Conversations.from_json(broken)
