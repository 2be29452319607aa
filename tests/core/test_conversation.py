"""Tests of the multi-turn history: turns, regenerate, feedback, truncation, JSON.

Exact prompt strings use the RedPajama and rinna presets. Budgets are reasoned about with a
one-token-per-byte encoder; the real byte-level BPE of :mod:`tests.core.bpe` checks that
token ids and counts are the tokenizer's. A state machine drives random operation sequences
and checks the invariants after every step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chatstream.core.conversation import (
    Conversation,
    Feedback,
    Message,
    MessageStatus,
    RenderedPrompt,
    Role,
)
from chatstream.core.errors import (
    ChatStreamError,
    LocalProtocolError,
    NothingToRegenerateError,
    PromptTooLongError,
    TurnInFlightError,
    UnknownMessageError,
)
from chatstream.core.prompts import (
    AbstractChatPrompt,
    ChatPromptRinnaJapaneseGPTNeoxInst,
    ChatPromptTogetherRedPajamaINCITEChat,
)

from .bpe import byte_level_bpe

RedPajama = ChatPromptTogetherRedPajamaINCITEChat
Rinna = ChatPromptRinnaJapaneseGPTNeoxInst

Encode = Callable[[str], Sequence[int]]
BIG = 10**9  # a budget nothing in these tests reaches

SYSTEM = "You are a helpful bot.\n"
FEW_SHOT = "<human>: 2+2?\n<bot>: 4\n"


def byte_tokens(text: str) -> list[int]:
    """One token per UTF-8 byte: budgets are plain byte counts."""
    return list(text.encode())


def bpe_tokens(text: str) -> list[int]:
    return byte_level_bpe().encode(text)


class SystemFewShot(RedPajama):
    """A user prompt class with a system text and a few-shot exchange, both never dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.set_system(SYSTEM)

    def build_initial_prompt(self, chat_prompt: AbstractChatPrompt) -> None:
        chat_prompt.add_requester_msg("2+2?", message_id="shot-q")
        chat_prompt.add_responder_msg("4", message_id="shot-a")


class PlainCompletion(SystemFewShot):
    """Chat mode off: the prompt is the user's message alone."""

    def __init__(self) -> None:
        super().__init__()
        self.set_chat_mode_enabled(False)


def turn(conv: Conversation, n: int, user: str, reply: str, finish: str = "stop") -> Message:
    """A whole turn with ids ``u{n}`` and ``r{n}``."""
    conv.start_turn(user, user_message_id=f"u{n}", reply_id=f"r{n}")
    conv.append_reply(reply)
    return conv.finish_reply(finish)


def chat(*exchanges: tuple[str, str], current: str) -> Conversation:
    """Finished exchanges, then ``current`` in flight (ids u1/r1, u2/r2, ...)."""
    conv = Conversation()
    for n, (user, reply) in enumerate(exchanges, start=1):
        turn(conv, n, user, reply)
    conv.start_turn(current, user_message_id="now-u", reply_id="now-r")
    return conv


def red_pajama_text(turns: Sequence[tuple[str, str]], current: str, prefix: str = "") -> str:
    """The reference RedPajama rendering of some turns and the open current one."""
    body = "".join(f"<human>: {user}\n<bot>: {reply}\n" for user, reply in turns)
    return f"{prefix}{body}<human>: {current}\n<bot>:"


def round_trip(conv: Conversation) -> Conversation:
    return Conversation.from_json(json.loads(json.dumps(conv.to_json())))


# -- turns ------------------------------------------------------------------------------------


def test_new_conversation_is_idle() -> None:
    conv = Conversation()
    assert not conv.in_flight
    assert conv.messages == []
    assert conv.archived == []
    with pytest.raises(LocalProtocolError, match="no turn is in flight"):
        _ = conv.reply
    with pytest.raises(LocalProtocolError):
        conv.append_reply("x")
    with pytest.raises(LocalProtocolError):
        conv.finish_reply("stop")


def test_start_turn_streams_into_the_reply() -> None:
    conv = Conversation()
    reply = conv.start_turn("hi", user_message_id="u1", reply_id="r1")
    assert conv.in_flight
    assert conv.reply is reply
    assert reply == Message(
        id="r1",
        role=Role.ASSISTANT,
        content="",
        status=MessageStatus.STREAMING,
        in_reply_to="u1",
        parent="u1",
        seq=1,
    )
    assert conv.messages[0] == Message(id="u1", role=Role.USER, content="hi", seq=0)
    conv.append_reply("Hel")
    conv.append_reply("lo")
    assert reply.content == "Hello"
    assert conv.finish_reply("stop") is reply
    assert (reply.status, reply.finish_reason) == (MessageStatus.COMPLETE, "stop")
    assert not conv.in_flight
    with pytest.raises(LocalProtocolError):
        conv.append_reply("more")


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("stop", MessageStatus.COMPLETE),
        ("length", MessageStatus.COMPLETE),
        ("stop_string", MessageStatus.COMPLETE),
        ("cancelled", MessageStatus.CANCELLED),
        ("error", MessageStatus.ERROR),
    ],
)
def test_finish_keeps_partial_text(reason: str, status: MessageStatus) -> None:
    conv = Conversation()
    reply = turn(conv, 1, "q", "partial", finish=reason)
    assert (reply.content, reply.status, reply.finish_reason) == ("partial", status, reason)
    assert not conv.in_flight


def test_second_turn_while_in_flight_is_refused() -> None:
    conv = Conversation()
    conv.start_turn("a", user_message_id="u1", reply_id="r1")
    conv.append_reply("so far")
    before = conv.to_json()
    with pytest.raises(TurnInFlightError) as caught:
        conv.start_turn("b", user_message_id="u2", reply_id="r2")
    assert caught.value.status_hint == 409
    assert isinstance(caught.value, LocalProtocolError)
    with pytest.raises(TurnInFlightError):
        conv.start_regenerate(reply_id="r2")
    with pytest.raises(TurnInFlightError):
        conv.clear()
    assert conv.to_json() == before  # nothing interleaved, nothing lost
    conv.finish_reply("stop")
    conv.start_turn("b", user_message_id="u2", reply_id="r2")  # now it is fine


def test_in_flight_check_beats_the_id_check() -> None:
    conv = Conversation()
    conv.start_turn("a", user_message_id="u1", reply_id="r1")
    with pytest.raises(TurnInFlightError):
        conv.start_turn("b", user_message_id="u1", reply_id="r1")


@pytest.mark.parametrize(
    ("user_id", "reply_id"),
    [
        pytest.param("x", "x", id="same-id-twice"),
        pytest.param("u1", "new-r", id="user-id-of-a-user-message"),
        pytest.param("new-u", "r1", id="reply-id-of-a-reply"),
        pytest.param("r1", "new-r", id="user-id-of-a-reply"),
        pytest.param("new-u", "old-r2", id="reply-id-of-an-archived-reply"),
        pytest.param("old-r2", "new-r", id="user-id-of-an-archived-reply"),
    ],
)
def test_duplicate_ids_are_refused(user_id: str, reply_id: str) -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    conv.start_turn("c", user_message_id="u2", reply_id="old-r2")
    conv.finish_reply("stop")
    conv.start_regenerate(reply_id="r2")
    conv.finish_reply("stop")
    before = conv.to_json()
    with pytest.raises(LocalProtocolError, match="must be new and distinct") as caught:
        conv.start_turn("d", user_message_id=user_id, reply_id=reply_id)
    assert caught.value.status_hint == 400
    assert conv.to_json() == before


@pytest.mark.parametrize("reply_id", ["u1", "r1", "old"])
def test_regenerate_refuses_a_known_id_and_archives_nothing(reply_id: str) -> None:
    conv = Conversation()
    conv.start_turn("a", user_message_id="u1", reply_id="old")
    conv.finish_reply("stop")
    conv.start_regenerate(reply_id="r1")
    conv.finish_reply("stop")
    before = conv.to_json()
    with pytest.raises(LocalProtocolError, match="must be new and distinct"):
        conv.start_regenerate(reply_id=reply_id)
    assert conv.to_json() == before


# -- regenerate -------------------------------------------------------------------------------


def test_regenerate_archives_the_old_reply() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    old = turn(conv, 2, "c", "first answer")
    new = conv.start_regenerate(reply_id="r2-again")
    assert new.id == "r2-again"
    assert new.in_reply_to == "u2"
    assert new.status is MessageStatus.STREAMING
    assert conv.archived == [old]
    assert [m.id for m in conv.messages] == ["u1", "r1", "u2", "r2-again"]
    assert conv.find("r2") is old  # the old id remains findable
    conv.append_reply("second answer")
    conv.finish_reply("stop")
    assert conv.find("r2").content == "first answer"
    assert conv.find("r2-again").content == "second answer"


def test_feedback_and_history_on_an_archived_reply() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    turn(conv, 2, "c", "first")
    conv.start_regenerate(reply_id="r2b")
    conv.append_reply("second")
    conv.finish_reply("stop")
    conv.start_regenerate(reply_id="r2c")
    conv.finish_reply("cancelled")

    message = conv.set_feedback("r2", is_like=False, data={"reason": "wrong", "stars": 1})
    assert message is conv.find("r2")
    assert message.feedback == Feedback(is_like=False, data={"reason": "wrong", "stars": 1})
    ids = [m.id for m in conv.history_until("r2")]
    assert ids == ["u1", "r1", "u2", "r2"]
    assert [m.id for m in conv.history_until("r2b")] == ["u1", "r1", "u2", "r2b"]
    assert [m.id for m in conv.history_until("r2c")] == ["u1", "r1", "u2", "r2c"]
    assert conv.history_until("r2")[-1].content == "first"
    # The feedback survives the JSON round trip, on the archived reply.
    assert round_trip(conv).find("r2").feedback == message.feedback


def test_regenerate_after_a_failed_or_cancelled_reply() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "boom", finish="error")
    conv.start_regenerate(reply_id="r1b")
    conv.finish_reply("cancelled")
    conv.start_regenerate(reply_id="r1c")
    assert [m.id for m in conv.archived] == ["r1", "r1b"]
    assert [m.status for m in conv.archived] == [MessageStatus.ERROR, MessageStatus.CANCELLED]
    assert conv.reply.in_reply_to == "u1"


def test_regenerate_in_flight_prompt_uses_the_same_user_message() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    turn(conv, 2, "c", "bad answer")
    conv.start_regenerate(reply_id="r2b")
    rendered = conv.render(RedPajama, encode=byte_tokens, budget=BIG)
    assert rendered.text == "<human>: a\n<bot>: b\n<human>: c\n<bot>:"
    assert "bad answer" not in rendered.text


def test_nothing_to_regenerate() -> None:
    conv = Conversation()
    with pytest.raises(NothingToRegenerateError) as caught:
        conv.start_regenerate(reply_id="r1")
    assert caught.value.status_hint == 400
    assert isinstance(caught.value, LocalProtocolError)
    turn(conv, 1, "a", "b")
    conv.clear()
    with pytest.raises(NothingToRegenerateError):
        conv.start_regenerate(reply_id="r1")
    assert conv.messages == []
    assert conv.archived == []


def test_regenerate_answers_a_trailing_user_message() -> None:
    # A store may hold a user message whose reply was never written.
    conv = Conversation.from_json(
        {"version": 1, "messages": [{"id": "u1", "role": "user", "content": "hi"}]}
    )
    reply = conv.start_regenerate(reply_id="r1")
    assert reply.in_reply_to == "u1"
    assert conv.archived == []
    assert conv.render(RedPajama, encode=byte_tokens, budget=BIG).text == "<human>: hi\n<bot>:"


# -- clear, find, history, feedback -----------------------------------------------------------


def test_clear_forgets_everything_and_frees_the_ids() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    conv.start_regenerate(reply_id="r1b")
    conv.finish_reply("stop")
    conv.set_feedback("r1", is_like=True)
    conv.clear()
    assert conv == Conversation()
    for message_id in ("u1", "r1", "r1b"):
        with pytest.raises(UnknownMessageError):
            conv.find(message_id)
    turn(conv, 1, "again", "ok")  # ids may be used again after a clear
    assert [m.id for m in conv.messages] == ["u1", "r1"]


def test_unknown_message_id() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    with pytest.raises(UnknownMessageError, match="'nope'") as caught:
        conv.find("nope")
    assert caught.value.status_hint == 404
    assert isinstance(caught.value, LocalProtocolError)
    with pytest.raises(UnknownMessageError):
        conv.history_until("nope")
    with pytest.raises(UnknownMessageError):
        conv.set_feedback("nope", is_like=True)


def test_history_until_live_ids() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    turn(conv, 2, "c", "d")
    conv.start_turn("e", user_message_id="u3", reply_id="r3")
    ids = [m.id for m in conv.messages]
    for index, message_id in enumerate(ids):
        history = conv.history_until(message_id)
        assert history == conv.messages[: index + 1]
        assert history is not conv.messages
    # The reply in flight is in its own history, as streamed so far.
    conv.append_reply("f")
    assert conv.history_until("r3")[-1].content == "f"


def test_feedback_on_any_message_id() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    conv.start_turn("c", user_message_id="u2", reply_id="r2")
    assert conv.set_feedback("r1", is_like=True).feedback == Feedback(is_like=True)
    assert conv.set_feedback("u1", is_like=False, data="why").feedback == Feedback(
        is_like=False, data="why"
    )
    conv.set_feedback("r2", is_like=True, data=[1, 2])  # even the reply in flight
    # A second feedback replaces the first.
    conv.set_feedback("r1", is_like=False, data={"form": {"q1": "bad"}})
    assert conv.find("r1").feedback == Feedback(is_like=False, data={"form": {"q1": "bad"}})
    assert round_trip(conv) == conv


def test_a_turn_adopts_the_feedback_a_later_copy_has_on_its_messages() -> None:
    # Loaded at the start of a turn; meanwhile another request saves feedback on a copy.
    conv = Conversation()
    turn(conv, 1, "a", "b")
    turn(conv, 2, "c", "first")
    conv.start_regenerate(reply_id="r2b")
    later = round_trip(conv)
    later.set_feedback("r1", is_like=True, data="good")
    later.set_feedback("r2", is_like=False)  # an archived reply
    conv.set_feedback("u1", is_like=False, data="mine")  # feedback only this copy has
    conv.append_reply("second")
    conv.finish_reply("stop")
    conv.adopt_feedback(later)
    assert conv.find("r1").feedback == Feedback(is_like=True, data="good")
    assert conv.find("r2").feedback == Feedback(is_like=False)
    assert conv.find("u1").feedback == Feedback(is_like=False, data="mine")
    assert conv.find("r2b").feedback is None and conv.find("r2b").content == "second"


def test_error_hierarchy() -> None:
    for error in (TurnInFlightError, NothingToRegenerateError, UnknownMessageError):
        assert issubclass(error, LocalProtocolError)
        assert issubclass(error, ChatStreamError)
    assert issubclass(PromptTooLongError, LocalProtocolError)
    assert PromptTooLongError("x").status_hint == 400


# -- render: exact prompts --------------------------------------------------------------------


def test_render_red_pajama_two_turns_then_the_current_one() -> None:
    conv = chat(("a", "b"), current="c")
    rendered = conv.render(RedPajama, encode=bpe_tokens, budget=BIG)
    assert rendered == RenderedPrompt(
        text="<human>: a\n<bot>: b\n<human>: c\n<bot>:",
        token_ids=tuple(bpe_tokens("<human>: a\n<bot>: b\n<human>: c\n<bot>:")),
        dropped_turns=0,
        stop_strings=("<|endoftext|>", "\n<"),
        replacements=(),
        strip_reply=True,
        add_special_tokens=None,
    )


def test_render_first_turn() -> None:
    conv = chat(current="Who is Alan Turing")
    rendered = conv.render(RedPajama, encode=byte_tokens, budget=BIG)
    assert rendered.text == "<human>: Who is Alan Turing\n<bot>:"
    assert rendered.token_ids == tuple(rendered.text.encode())


def test_render_does_not_include_the_streamed_text_or_change_the_conversation() -> None:
    conv = chat(("a", "b"), current="c")
    conv.append_reply("partial")
    before = conv.to_json()
    text = conv.render(RedPajama, encode=byte_tokens, budget=BIG).text
    assert text == "<human>: a\n<bot>: b\n<human>: c\n<bot>:"
    assert conv.to_json() == before


def test_render_needs_a_turn_in_flight() -> None:
    conv = Conversation()
    with pytest.raises(LocalProtocolError):
        conv.render(RedPajama, encode=byte_tokens, budget=BIG)
    turn(conv, 1, "a", "b")
    with pytest.raises(LocalProtocolError):
        conv.render(RedPajama, encode=byte_tokens, budget=BIG)


def test_render_system_and_few_shot() -> None:
    conv = chat(("a", "b"), current="c")
    rendered = conv.render(SystemFewShot, encode=byte_tokens, budget=BIG)
    assert rendered.text == SYSTEM + FEW_SHOT + "<human>: a\n<bot>: b\n<human>: c\n<bot>:"
    assert rendered.dropped_turns == 0


def test_render_failed_and_empty_cancelled_replies_are_left_out() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    turn(conv, 2, "broken question", "half an answ", finish="error")
    turn(conv, 3, "gone", "", finish="cancelled")
    turn(conv, 4, "kept", "partial", finish="cancelled")
    turn(conv, 5, "long", "cut", finish="length")
    conv.start_turn("now", user_message_id="u6", reply_id="r6")
    rendered = conv.render(RedPajama, encode=byte_tokens, budget=BIG)
    assert rendered.text == (
        "<human>: a\n<bot>: b\n"
        "<human>: kept\n<bot>: partial\n"
        "<human>: long\n<bot>: cut\n"
        "<human>: now\n<bot>:"
    )
    # The failed turns are still in the history for display and feedback.
    assert conv.find("r2").content == "half an answ"
    assert conv.find("r3").status is MessageStatus.CANCELLED


def test_render_chat_mode_off_is_the_user_message_alone() -> None:
    conv = chat(("a", "b"), ("c", "d"), current="Translate: chat")
    rendered = conv.render(PlainCompletion, encode=byte_tokens, budget=BIG)
    assert rendered.text == "Translate: chat"
    assert rendered.stop_strings == ()
    assert rendered.dropped_turns == 0
    assert rendered.token_ids == tuple(b"Translate: chat")
    assert conv.render(PlainCompletion, encode=byte_tokens, budget=15).text == "Translate: chat"


def test_render_chat_mode_off_too_long() -> None:
    conv = chat(("a", "b"), current="Translate: chat")
    with pytest.raises(PromptTooLongError, match=r"needs 15 tokens.*limit is 14"):
        conv.render(PlainCompletion, encode=byte_tokens, budget=14)


def test_render_chat_mode_off_gives_up_at_once() -> None:
    # Dropping turns cannot shorten a prompt that is the user's message alone.
    made: list[AbstractChatPrompt] = []

    def factory() -> AbstractChatPrompt:
        made.append(PlainCompletion())
        return made[-1]

    conv = chat(("a", "b"), ("c", "d"), current="long")
    with pytest.raises(PromptTooLongError):
        conv.render(factory, encode=byte_tokens, budget=3)
    assert len(made) == 1


def test_render_rinna() -> None:
    conv = chat(("こんにちは", "はい、こんにちは。"), current="1行目\n2行目")
    rendered = conv.render(Rinna, encode=bpe_tokens, budget=BIG)
    text = (
        "ユーザー: こんにちは<NL>"
        "システム: はい、こんにちは。<NL>"
        "ユーザー: 1行目<NL>2行目<NL>"
        "システム: "
    )
    assert rendered == RenderedPrompt(
        text=text,
        token_ids=tuple(bpe_tokens(text)),
        dropped_turns=0,
        stop_strings=(),
        replacements=(("<NL>", "\n"),),
        strip_reply=True,
        add_special_tokens=False,
    )
    # The conversation keeps what the user typed; only the prompt has <NL>.
    assert conv.find("now-u").content == "1行目\n2行目"


# -- render: truncation -----------------------------------------------------------------------

# "<human>: a\n<bot>: b\n" is 20 bytes per old turn; "<human>: e\n<bot>:" is 17 bytes.
FULL = "<human>: a\n<bot>: b\n<human>: c\n<bot>: d\n<human>: e\n<bot>:"


@pytest.mark.parametrize(
    ("budget", "dropped", "text"),
    [
        (BIG, 0, FULL),
        (57, 0, FULL),
        (56, 1, "<human>: c\n<bot>: d\n<human>: e\n<bot>:"),
        (37, 1, "<human>: c\n<bot>: d\n<human>: e\n<bot>:"),
        (36, 2, "<human>: e\n<bot>:"),
        (17, 2, "<human>: e\n<bot>:"),
    ],
)
def test_truncation_drops_whole_oldest_turns(budget: int, dropped: int, text: str) -> None:
    assert len(FULL.encode()) == 57
    conv = chat(("a", "b"), ("c", "d"), current="e")
    rendered = conv.render(RedPajama, encode=byte_tokens, budget=budget)
    assert (rendered.dropped_turns, rendered.text) == (dropped, text)
    assert len(rendered.token_ids) <= budget
    # Nothing was dropped from the conversation itself.
    assert [m.content for m in conv.messages] == ["a", "b", "c", "d", "e", ""]


@pytest.mark.parametrize("budget", [16, 1, 0, -5])
def test_a_current_turn_that_alone_does_not_fit_is_an_error(budget: int) -> None:
    conv = chat(("a", "b"), ("c", "d"), current="e")
    with pytest.raises(PromptTooLongError, match=rf"needs 17 tokens.*limit is {budget}") as caught:
        conv.render(RedPajama, encode=byte_tokens, budget=budget)
    assert caught.value.status_hint == 400


def test_truncation_never_drops_the_system_text_or_the_few_shot() -> None:
    prefix = SYSTEM + FEW_SHOT
    conv = chat(("a", "b"), ("c", "d"), current="e")
    alone = prefix + "<human>: e\n<bot>:"
    rendered = conv.render(SystemFewShot, encode=byte_tokens, budget=len(alone.encode()))
    assert (rendered.text, rendered.dropped_turns) == (alone, 2)
    one_more = prefix + "<human>: c\n<bot>: d\n<human>: e\n<bot>:"
    rendered = conv.render(SystemFewShot, encode=byte_tokens, budget=len(one_more.encode()))
    assert (rendered.text, rendered.dropped_turns) == (one_more, 1)
    # One byte short of system + few-shot + current turn: an error, never a cut system text.
    with pytest.raises(PromptTooLongError):
        conv.render(SystemFewShot, encode=byte_tokens, budget=len(alone.encode()) - 1)


def test_truncation_counts_only_turns_shown_to_the_model() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    turn(conv, 2, "x", "", finish="cancelled")  # never shown, so never "dropped"
    turn(conv, 3, "c", "d")
    conv.start_turn("e", user_message_id="u4", reply_id="r4")
    rendered = conv.render(RedPajama, encode=byte_tokens, budget=37)
    assert (rendered.text, rendered.dropped_turns) == (
        "<human>: c\n<bot>: d\n<human>: e\n<bot>:",
        1,
    )


def test_truncation_with_the_real_bpe() -> None:
    turns = [
        ("hello world", "the quick brown fox"),
        ("東京 です", "こんにちは 世界 🙂"),
        ("chat model reply", "stream token async trio"),
    ]
    conv = chat(*turns, current="ありがとう lazy dog")
    texts = [red_pajama_text(turns[k:], "ありがとう lazy dog") for k in range(len(turns) + 1)]
    counts = [len(bpe_tokens(t)) for t in texts]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[1] > counts[2] > counts[3]
    for dropped, count in enumerate(counts):
        rendered = conv.render(RedPajama, encode=bpe_tokens, budget=count)
        assert (rendered.text, rendered.dropped_turns) == (texts[dropped], dropped)
        assert rendered.token_ids == tuple(bpe_tokens(texts[dropped]))
        assert len(rendered.token_ids) == count
        if dropped:
            # One token short of keeping one more turn: that turn is dropped whole.
            shorter = conv.render(RedPajama, encode=bpe_tokens, budget=counts[dropped - 1] - 1)
            assert shorter.dropped_turns == dropped
    with pytest.raises(PromptTooLongError):
        conv.render(RedPajama, encode=bpe_tokens, budget=counts[-1] - 1)


def test_rendering_with_a_list_encode_result() -> None:
    # Any sequence of ints will do; the prompt keeps a tuple.
    conv = chat(current="x")
    rendered = conv.render(RedPajama, encode=lambda s: [len(s)], budget=1)
    assert rendered.token_ids == (len("<human>: x\n<bot>:"),)


# -- JSON -------------------------------------------------------------------------------------


def test_json_round_trip_is_lossless() -> None:
    conv = Conversation()
    turn(conv, 1, "日本語\nです", "はい 🙂")
    turn(conv, 2, "q", "first", finish="length")
    conv.start_regenerate(reply_id="r2b")
    conv.append_reply("cut")
    conv.finish_reply("cancelled")
    turn(conv, 3, "boom?", "", finish="error")
    conv.set_feedback("r2", is_like=False, data={"note": "bad", "tags": ["a", None, 3]})
    conv.set_feedback("u1", is_like=True)
    conv.start_turn("streaming", user_message_id="u4", reply_id="r4")
    conv.append_reply("so f")
    conv.system = "Be brief."
    conv.title = "Japanese"
    data = conv.to_json()
    assert data["version"] == 2
    restored = round_trip(conv)
    assert restored == conv
    assert restored.to_json() == data
    assert restored.in_flight  # a store written mid-turn keeps the turn in flight
    assert [m.id for m in restored.archived] == ["r2"]
    assert restored.find("r2").feedback == Feedback(
        is_like=False, data={"note": "bad", "tags": ["a", None, 3]}
    )


def test_message_json_leaves_out_empty_fields() -> None:
    message = Message(id="u1", role=Role.USER, content="hi")
    assert message.to_json() == {
        "id": "u1",
        "role": "user",
        "content": "hi",
        "status": "complete",
        "seq": 0,
    }
    full = Message(
        id="r1",
        role=Role.ASSISTANT,
        content="yo",
        status=MessageStatus.CANCELLED,
        finish_reason="cancelled",
        in_reply_to="u1",
        feedback=Feedback(is_like=True, data=None),
        parent="u1",
        seq=4,
    )
    assert full.to_json() == {
        "id": "r1",
        "role": "assistant",
        "content": "yo",
        "status": "cancelled",
        "seq": 4,
        "parent": "u1",
        "finish_reason": "cancelled",
        "in_reply_to": "u1",
        "feedback": {"is_like": True, "data": None},
    }
    assert Message.from_json(full.to_json()) == full
    assert Message.from_json(message.to_json()) == message


def test_message_from_json_defaults() -> None:
    message = Message.from_json({"id": 7, "role": "assistant", "content": "x"})
    assert message == Message(id="7", role=Role.ASSISTANT, content="x")
    assert message.status is MessageStatus.COMPLETE
    with_feedback = Message.from_json(
        {"id": "a", "role": "user", "content": "", "feedback": {"is_like": False}}
    )
    assert with_feedback.feedback == Feedback(is_like=False, data=None)


def test_from_json_without_archive() -> None:
    conv = Conversation.from_json({"version": 1, "messages": []})
    assert conv == Conversation()


@pytest.mark.parametrize(
    "data",
    [
        {"version": 3, "messages": []},
        {"version": "1", "messages": []},
        {"version": 0, "messages": []},
        {"messages": []},
    ],
)
def test_from_json_with_a_bad_version(data: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError, match="unsupported conversation version"):
        Conversation.from_json(data)


# -- foreign histories (from a session store) -------------------------------------------------


def test_render_skips_malformed_history_from_a_store() -> None:
    # An orphan reply, a user message whose reply was never stored and a second reply in a
    # row: none of them is a turn.
    conv = Conversation.from_json(
        {
            "version": 1,
            "messages": [
                {"id": "r0", "role": "assistant", "content": "orphan"},
                {"id": "u1", "role": "user", "content": "lost"},
                {"id": "u2", "role": "user", "content": "a"},
                {"id": "r2", "role": "assistant", "content": "b", "in_reply_to": "u2"},
                {"id": "r2x", "role": "assistant", "content": "second reply in a row"},
                {"id": "u3", "role": "user", "content": "c"},
                {
                    "id": "r3",
                    "role": "assistant",
                    "content": "",
                    "status": "streaming",
                    "in_reply_to": "u3",
                },
            ],
        }
    )
    assert conv.in_flight
    assert conv.render(RedPajama, encode=byte_tokens, budget=BIG).text == (
        "<human>: a\n<bot>: b\n<human>: c\n<bot>:"
    )


def test_archived_reply_without_its_user_message_is_an_error() -> None:
    # Only reachable from foreign JSON: the API never loses an archived reply's user message.
    conv = Conversation.from_json(
        {
            "version": 1,
            "messages": [],
            "archived": [{"id": "r9", "role": "assistant", "content": "x", "in_reply_to": "u9"}],
        }
    )
    with pytest.raises(LocalProtocolError, match="lost its place"):
        conv.history_until("r9")


# -- random operation sequences ---------------------------------------------------------------

TEXT = st.text(alphabet=st.sampled_from("ab c\n<>:日本🙂"), max_size=6)
JSON_DATA = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
FINISH = st.sampled_from(["stop", "length", "cancelled", "error"])
PROMPTS: dict[str, tuple[Callable[[], AbstractChatPrompt], str]] = {
    "red_pajama": (RedPajama, ""),
    "system_few_shot": (SystemFewShot, SYSTEM + FEW_SHOT),
}
ENCODERS: dict[str, Encode] = {"bytes": byte_tokens, "bpe": bpe_tokens}


class ConversationMachine(RuleBasedStateMachine):
    """Random turns, regenerates, edits, switches of versions, trims, cancels, clears and
    feedback against a simple model: every message as ``[parent id, role, text, finish
    reason]`` in the order they were made, and the ids of the current path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conversation()
        self.nodes: dict[str, list[Any]] = {}
        self.path: list[str] = []
        self.next_id = 0

    def new_id(self) -> str:
        self.next_id += 1
        return f"m{self.next_id}"

    def known_ids(self) -> list[str]:
        return [m.id for m in [*self.conv.messages, *self.conv.archived]]

    @property
    def turns(self) -> list[list[Any]]:
        """``[user text, reply text, finish reason]`` per exchange on the path."""
        return [
            [self.nodes[user][2], self.nodes[reply][2], self.nodes[reply][3]]
            for user, reply in zip(self.path[::2], self.path[1::2], strict=True)
        ]

    def branch(self, message_id: str) -> list[str]:
        ids = [message_id]
        while self.nodes[ids[-1]][0] is not None:
            ids.append(self.nodes[ids[-1]][0])
        return ids[::-1]

    def add_turn(self, text: str, parent: str | None, user_id: str, reply_id: str) -> None:
        self.nodes[user_id] = [parent, Role.USER, text, None]
        self.nodes[reply_id] = [user_id, Role.ASSISTANT, "", None]

    # -- operations

    @rule(text=TEXT)
    def start_turn(self, text: str) -> None:
        user_id, reply_id = self.new_id(), self.new_id()
        if self.conv.in_flight:
            with pytest.raises(TurnInFlightError):
                self.conv.start_turn(text, user_message_id=user_id, reply_id=reply_id)
            return
        reply = self.conv.start_turn(text, user_message_id=user_id, reply_id=reply_id)
        assert (reply.id, reply.in_reply_to, reply.content) == (reply_id, user_id, "")
        self.add_turn(text, self.path[-1] if self.path else None, user_id, reply_id)
        self.path += [user_id, reply_id]

    @rule()
    def regenerate(self) -> None:
        reply_id = self.new_id()
        if self.conv.in_flight:
            with pytest.raises(TurnInFlightError):
                self.conv.start_regenerate(reply_id=reply_id)
            return
        if not self.path:
            with pytest.raises(NothingToRegenerateError):
                self.conv.start_regenerate(reply_id=reply_id)
            return
        reply = self.conv.start_regenerate(reply_id=reply_id)
        assert reply.in_reply_to == self.path[-2]
        self.nodes[reply_id] = [self.path[-2], Role.ASSISTANT, "", None]
        self.path[-1] = reply_id

    @precondition(lambda self: bool(self.path))
    @rule(data=st.data(), text=TEXT)
    def edit(self, data: st.DataObject, text: str) -> None:
        target = data.draw(st.sampled_from(self.known_ids()))
        user_id, reply_id = self.new_id(), self.new_id()
        if self.conv.in_flight:
            with pytest.raises(TurnInFlightError):
                self.conv.start_edit(target, text, user_message_id=user_id, reply_id=reply_id)
            return
        if target not in self.path or self.nodes[target][1] is not Role.USER:
            before = self.conv.to_json()
            with pytest.raises(UnknownMessageError):
                self.conv.start_edit(target, text, user_message_id=user_id, reply_id=reply_id)
            assert self.conv.to_json() == before
            return
        self.conv.start_edit(target, text, user_message_id=user_id, reply_id=reply_id)
        self.add_turn(text, self.nodes[target][0], user_id, reply_id)
        self.path = [*self.path[: self.path.index(target)], user_id, reply_id]
        assert target in [m.id for m in self.conv.versions(user_id)]

    @precondition(lambda self: bool(self.path))
    @rule(data=st.data())
    def switch(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self.known_ids()))
        if self.conv.in_flight:
            with pytest.raises(TurnInFlightError):
                self.conv.switch_to(target)
            return
        self.conv.switch_to(target)
        if target not in self.path:
            path = self.branch(target)
            while below := [k for k, node in self.nodes.items() if node[0] == path[-1]]:
                path.append(below[-1])  # the newest version
            self.path = path
        assert target in [m.id for m in self.conv.messages]

    @precondition(lambda self: bool(self.path))
    @rule(data=st.data())
    def versions(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self.known_ids()))
        expected = [k for k, node in self.nodes.items() if node[0] == self.nodes[target][0]]
        assert [m.id for m in self.conv.versions(target)] == expected

    @rule(limit=st.integers(1, 4))
    def trim(self, limit: int) -> None:
        before = list(self.path)
        self.conv.trim(limit)
        path = [m.id for m in self.conv.messages]
        if self.conv.in_flight or len(before) <= limit:
            assert path == before
        else:
            # Whole exchanges from the oldest, never the newest.
            assert path == before[len(before) - len(path) :]
            assert len(path) % 2 == 0 and path
            assert len(path) <= limit or len(path) == 2
            assert self.conv.messages[0].parent is None
        assert len(self.conv.archived) <= max(limit, len(self.nodes) - len(self.path))
        if not self.conv.in_flight:
            assert len(self.conv.archived) <= limit
        # Update the model: what is kept is unchanged, its first message is now a root.
        kept = set(self.known_ids())
        self.nodes = {k: node for k, node in self.nodes.items() if k in kept}
        if path:
            self.nodes[path[0]][0] = None
        self.path = path

    @precondition(lambda self: self.conv.in_flight)
    @rule(text=TEXT)
    def stream(self, text: str) -> None:
        self.conv.append_reply(text)
        self.nodes[self.path[-1]][2] += text

    @precondition(lambda self: self.conv.in_flight)
    @rule(reason=FINISH)
    def finish(self, reason: str) -> None:
        self.conv.finish_reply(reason)
        self.nodes[self.path[-1]][3] = reason

    @precondition(lambda self: self.conv.in_flight)
    @rule()
    def abort(self) -> None:
        reply_id = self.path[-1]
        self.conv.abort_turn()
        # As before the turn: the model remembers nothing of how it began, so undo by the
        # ids: the reply goes, and so does its user message if the turn added one.
        user_id = self.nodes.pop(reply_id)[0]
        added_user = user_id not in [m.id for m in self.conv.messages]
        if added_user:
            del self.nodes[user_id]
        self.path = [m.id for m in self.conv.messages]
        assert set(self.path) <= set(self.nodes)

    @rule()
    def clear(self) -> None:
        if self.conv.in_flight:
            with pytest.raises(TurnInFlightError):
                self.conv.clear()
            return
        self.conv.clear()
        self.nodes.clear()
        self.path.clear()

    @precondition(lambda self: bool(self.conv.messages))
    @rule(data=st.data(), is_like=st.booleans(), payload=JSON_DATA)
    def feedback(self, data: st.DataObject, is_like: bool, payload: Any) -> None:
        message_id = data.draw(st.sampled_from(self.known_ids()))
        message = self.conv.set_feedback(message_id, is_like=is_like, data=payload)
        assert self.conv.find(message_id) is message
        assert message.feedback == Feedback(is_like=is_like, data=payload)

    @precondition(lambda self: bool(self.conv.messages))
    @rule(data=st.data())
    def history(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(self.known_ids()))
        history = self.conv.history_until(message_id)
        assert [m.id for m in history] == self.branch(message_id)

    @precondition(lambda self: bool(self.conv.messages) and not self.conv.in_flight)
    @rule(data=st.data())
    def reuse_an_id(self, data: st.DataObject) -> None:
        taken = data.draw(st.sampled_from(self.known_ids()))
        before = self.conv.to_json()
        with pytest.raises(LocalProtocolError, match="must be new"):
            self.conv.start_turn("x", user_message_id=self.new_id(), reply_id=taken)
        with pytest.raises(LocalProtocolError, match="must be new"):
            self.conv.start_regenerate(reply_id=taken)
        with pytest.raises(LocalProtocolError, match="must be new"):
            self.conv.start_edit(self.path[0], "x", user_message_id=taken, reply_id="new")
        assert self.conv.to_json() == before

    @rule(prompt=st.sampled_from(sorted(PROMPTS)), encoder=st.sampled_from(sorted(ENCODERS)))
    def render(self, prompt: str, encoder: str) -> None:
        factory, prefix = PROMPTS[prompt]
        encode = ENCODERS[encoder]
        if not self.conv.in_flight:
            with pytest.raises(LocalProtocolError):
                self.conv.render(factory, encode=encode, budget=BIG)
            return
        shown = [
            (user, reply)
            for user, reply, reason in self.turns[:-1]
            if reason in ("stop", "length") or (reason == "cancelled" and reply)
        ]
        current = self.turns[-1][0]
        texts = [red_pajama_text(shown[k:], current, prefix) for k in range(len(shown) + 1)]
        counts = [len(encode(text)) for text in texts]
        for budget in {counts[0], counts[-1], counts[-1] - 1, (counts[0] + counts[-1]) // 2}:
            fitting = [k for k, count in enumerate(counts) if count <= budget]
            if not fitting:
                with pytest.raises(PromptTooLongError):
                    self.conv.render(factory, encode=encode, budget=budget)
                continue
            rendered = self.conv.render(factory, encode=encode, budget=budget)
            # The fewest oldest whole turns are dropped; the rest is kept verbatim.
            assert rendered.dropped_turns == fitting[0]
            assert rendered.text == texts[fitting[0]]
            assert len(rendered.token_ids) <= budget
            assert rendered.text.startswith(prefix)
            assert rendered.text.endswith(f"<human>: {current}\n<bot>:")

    # -- invariants

    @invariant()
    def at_most_one_turn_in_flight(self) -> None:
        streaming = [m for m in self.conv.messages if m.status is MessageStatus.STREAMING]
        assert len(streaming) <= 1
        assert self.conv.in_flight == bool(streaming)
        if streaming:
            assert streaming[0] is self.conv.messages[-1]
        assert all(m.status is not MessageStatus.STREAMING for m in self.conv.archived)

    @invariant()
    def ids_are_unique(self) -> None:
        ids = self.known_ids()
        assert len(ids) == len(set(ids))
        assert len({m.seq for m in [*self.conv.messages, *self.conv.archived]}) == len(ids)

    @invariant()
    def tree_matches_the_model(self) -> None:
        assert [m.id for m in self.conv.messages] == self.path
        # Off the path: everything else, in the order it was made.
        assert [m.id for m in self.conv.archived] == [k for k in self.nodes if k not in self.path]
        for message in [*self.conv.messages, *self.conv.archived]:
            parent, role, text, reason = self.nodes[message.id]
            assert (message.parent, message.role, message.content) == (parent, role, text)
            assert message.finish_reason == reason
            if role is Role.ASSISTANT:
                assert message.in_reply_to == parent
        for user, reply in zip(self.conv.messages[::2], self.conv.messages[1::2], strict=True):
            assert (user.role, reply.role, reply.parent) == (Role.USER, Role.ASSISTANT, user.id)

    @invariant()
    def json_round_trip_is_equal(self) -> None:
        restored = round_trip(self.conv)
        assert restored == self.conv
        assert restored.in_flight == self.conv.in_flight


ConversationMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestConversationMachine = ConversationMachine.TestCase


# -- versions: edit, regenerate, switch ------------------------------------------------------


def branching() -> Conversation:
    """u1 r1 u2 r2, then u2 edited (u2b r2b), then r2b regenerated (r2c)."""
    conv = Conversation()
    turn(conv, 1, "a", "b")
    turn(conv, 2, "c", "d")
    conv.start_edit("u2", "c again", user_message_id="u2b", reply_id="r2b")
    conv.append_reply("e")
    conv.finish_reply("stop")
    conv.start_regenerate(reply_id="r2c")
    conv.append_reply("f")
    conv.finish_reply("stop")
    return conv


def ids(messages: Sequence[Message]) -> list[str]:
    return [m.id for m in messages]


def test_edit_branches_the_conversation() -> None:
    conv = branching()
    assert ids(conv.messages) == ["u1", "r1", "u2b", "r2c"]
    assert ids(conv.archived) == ["u2", "r2", "r2b"]
    assert conv.find("u2b").parent == "r1"
    assert ids(conv.versions("u2b")) == ids(conv.versions("u2")) == ["u2", "u2b"]
    assert ids(conv.versions("r2c")) == ["r2b", "r2c"]
    assert ids(conv.versions("u1")) == ["u1"]
    # The model sees the current path only.
    conv.start_turn("g", user_message_id="u3", reply_id="r3")
    rendered = conv.render(RedPajama, encode=byte_tokens, budget=BIG)
    assert rendered.text == red_pajama_text([("a", "b"), ("c again", "f")], "g")


def test_switch_brings_back_a_branch_with_its_newest_versions() -> None:
    conv = branching()
    conv.switch_to("u2")
    assert ids(conv.messages) == ["u1", "r1", "u2", "r2"]
    assert ids(conv.archived) == ["u2b", "r2b", "r2c"]
    conv.switch_to("r2")  # on the path: nothing changes
    assert ids(conv.messages) == ["u1", "r1", "u2", "r2"]
    # Back to the edit: below it, the newest reply.
    conv.switch_to("u2b")
    assert ids(conv.messages) == ["u1", "r1", "u2b", "r2c"]
    conv.switch_to("r2b")
    assert ids(conv.messages) == ["u1", "r1", "u2b", "r2b"]
    assert conv.history_until("r2") == [conv.find(i) for i in ("u1", "r1", "u2", "r2")]
    with pytest.raises(UnknownMessageError):
        conv.switch_to("nope")
    conv.start_turn("h", user_message_id="u3", reply_id="r3")
    with pytest.raises(TurnInFlightError):
        conv.switch_to("u2")


def test_edit_refuses_what_is_not_a_user_message_on_the_path() -> None:
    conv = branching()
    before = conv.to_json()
    for target in ("r1", "u2", "nope"):
        with pytest.raises(UnknownMessageError, match="on the current path"):
            conv.start_edit(target, "x", user_message_id="n1", reply_id="n2")
    assert conv.to_json() == before


def test_an_aborted_edit_puts_the_branch_back() -> None:
    conv = branching()
    conv.set_feedback("r2c", is_like=True)
    before = conv.to_json()
    conv.start_edit("u1", "first again", user_message_id="u1b", reply_id="r1b")
    assert ids(conv.messages) == ["u1b", "r1b"]
    assert ids(conv.versions("u1b")) == ["u1", "u1b"]
    conv.abort_turn()
    assert conv.to_json() == before


def test_trim_drops_the_branches_of_dropped_exchanges() -> None:
    conv = branching()
    turn(conv, 3, "i", "j")
    conv.start_edit("u1", "a2", user_message_id="u1b", reply_id="r1b")
    conv.finish_reply("stop")
    conv.switch_to("r3")
    assert ids(conv.messages) == ["u1", "r1", "u2b", "r2c", "u3", "r3"]
    conv.trim(4)
    # u1 r1 went, with the other version of u1 (u1b r1b); what grew below u2b stays.
    assert ids(conv.messages) == ["u2b", "r2c", "u3", "r3"]
    assert ids(conv.archived) == ["r2b"]
    assert conv.messages[0].parent is None
    assert ids(conv.versions("u2b")) == ["u2b"]
    assert round_trip(conv) == conv


def test_trim_bounds_the_versions_kept_off_the_path() -> None:
    conv = Conversation()
    turn(conv, 1, "a", "b")
    for n in range(5):
        conv.start_edit(conv.messages[0].id, f"v{n}", user_message_id=f"e{n}", reply_id=f"x{n}")
        conv.finish_reply("stop")
    assert len(conv.archived) == 10
    conv.trim(4)
    # The oldest branches go whole: a user message with its reply.
    assert ids(conv.archived) == ["e2", "x2", "e3", "x3"]
    assert ids(conv.messages) == ["e4", "x4"]
    # The newest exchange stays, even over the limit; a turn in flight is left alone.
    conv.trim(1)
    assert ids(conv.messages) == ["e4", "x4"]
    conv.start_regenerate(reply_id="y")
    before = conv.to_json()
    conv.trim(1)
    assert conv.to_json() == before


def test_drop_oldest_everything() -> None:
    conv = branching()
    conv.drop_oldest(len(conv.messages))
    assert conv == Conversation()


def test_a_conversation_system_text_replaces_the_prompt_class_one() -> None:
    conv = chat(("a", "b"), current="c")
    conv.system = "Answer in French.\n"
    rendered = conv.render(SystemFewShot, encode=byte_tokens, budget=BIG)
    assert rendered.text.startswith("Answer in French.\n" + FEW_SHOT)
    assert SYSTEM not in rendered.text
    assert (conv.render_history(SystemFewShot) or "").startswith("Answer in French.\n")


def test_default_title() -> None:
    conv = Conversation()
    assert conv.default_title() == ""
    turn(conv, 1, "  Plan a trip\nto Kyoto  ", "ok")
    assert conv.default_title() == "Plan a trip"
    conv.start_edit("u1", "x" * 100, user_message_id="u1b", reply_id="r1b")
    assert conv.default_title() == "x" * 79 + "…"
    conv.title = "Kyoto"
    assert conv.default_title() == "Kyoto"


def test_version_1_json_becomes_a_tree() -> None:
    conv = Conversation.from_json(
        {
            "version": 1,
            "messages": [
                {"id": "u1", "role": "user", "content": "a"},
                {"id": "r1", "role": "assistant", "content": "b", "in_reply_to": "u1"},
                {"id": "u2", "role": "user", "content": "c"},
                {"id": "r2b", "role": "assistant", "content": "d2", "in_reply_to": "u2"},
            ],
            "archived": [{"id": "r2", "role": "assistant", "content": "d", "in_reply_to": "u2"}],
        }
    )
    assert [m.parent for m in conv.messages] == [None, "u1", "r1", "u2"]
    assert ids(conv.versions("r2b")) == ["r2", "r2b"]
    conv.switch_to("r2")
    assert ids(conv.messages) == ["u1", "r1", "u2", "r2"]
    assert round_trip(conv) == conv


def test_a_parent_cycle_from_a_store_is_an_error() -> None:
    conv = Conversation.from_json(
        {
            "version": 2,
            "messages": [
                {"id": "u1", "role": "user", "content": "a", "parent": "r1", "seq": 0},
                {"id": "r1", "role": "assistant", "content": "b", "parent": "u1", "seq": 1},
            ],
        }
    )
    with pytest.raises(LocalProtocolError, match="lost its place"):
        conv.history_until("r1")


def test_abort_turn_restores_the_history_before_the_turn() -> None:
    conversation = Conversation()
    conversation.start_turn("a", user_message_id="u1", reply_id="r1")
    conversation.append_reply("b")
    conversation.finish_reply("stop")
    before = conversation.to_json()
    conversation.start_turn("c", user_message_id="u2", reply_id="r2")
    conversation.abort_turn()
    assert conversation.to_json() == before
    assert not conversation.in_flight
    # A regenerate that is refused puts the replaced reply back where it was.
    conversation.start_regenerate(reply_id="r3")
    assert [m.id for m in conversation.archived] == ["r1"]
    conversation.abort_turn()
    assert conversation.to_json() == before
    # The ids of an aborted turn were never used and may be used again.
    conversation.start_turn("c", user_message_id="u2", reply_id="r2")
    assert conversation.reply.id == "r2"


def test_abort_turn_needs_a_turn_in_flight() -> None:
    with pytest.raises(LocalProtocolError, match="no turn is in flight"):
        Conversation().abort_turn()


def test_render_history_shows_every_turn_without_truncation() -> None:
    conversation = Conversation()
    assert conversation.render_history(ChatPromptTogetherRedPajamaINCITEChat) is None
    conversation.start_turn("a", user_message_id="u1", reply_id="r1")
    conversation.append_reply("b")
    conversation.finish_reply("stop")
    assert (
        conversation.render_history(ChatPromptTogetherRedPajamaINCITEChat)
        == "<human>: a\n<bot>: b\n"
    )
    conversation.start_turn("c", user_message_id="u2", reply_id="r2")
    assert (
        conversation.render_history(ChatPromptTogetherRedPajamaINCITEChat)
        == "<human>: a\n<bot>: b\n<human>: c\n<bot>:"
    )
