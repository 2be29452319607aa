"""Tests of the prompt classes: exact formats, every method, serialisation, invariants."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatstream.core.errors import LocalProtocolError
from chatstream.core.prompts import (
    AbstractChatPrompt,
    ChatContent,
    ChatPromptRinnaJapaneseGPTNeoxInst,
    ChatPromptTogetherRedPajamaINCITEChat,
    PromptOptions,
)

RedPajama = ChatPromptTogetherRedPajamaINCITEChat
Rinna = ChatPromptRinnaJapaneseGPTNeoxInst

JA_Q1 = "日本のおすすめの観光地を教えてください。"
JA_A1 = "どの地域の観光地が知りたいですか？"
JA_Q2 = "渋谷の観光地を教えてください。"


class FewShotPrompt(AbstractChatPrompt):
    """A user-written prompt class: XML-ish tags and a few-shot initial context."""

    def __init__(self) -> None:
        super().__init__()
        self.set_requester("user")
        self.set_responder("assistant")

    def get_stop_strs(self) -> list[str]:
        return ["</turn>"]

    def create_prompt(self, opts: PromptOptions | None = None) -> str:
        parts = [self.system]
        for content in self.get_contents(opts):
            if content.message is None:
                parts.append(f"<{content.role}>")
            else:
                parts.append(f"<{content.role}>{content.message}</turn>")
        return "".join(parts)

    def build_initial_prompt(self, chat_prompt: AbstractChatPrompt) -> None:
        chat_prompt.add_requester_msg("2+2?")
        chat_prompt.add_responder_msg("4", message_id="shot-1")


def red_pajama(*messages: tuple[bool, str | None]) -> RedPajama:
    prompt = RedPajama()
    for is_requester, message in messages:
        if is_requester:
            prompt.add_requester_msg(message)
        else:
            prompt.add_responder_msg(message)
    return prompt


def assert_sides_in_step(prompt: AbstractChatPrompt) -> None:
    """The side lists hold exactly the history's objects of each side, in order."""
    requesters = [c for c in prompt.chat_contents if c.is_requester]
    responders = [c for c in prompt.chat_contents if not c.is_requester]
    assert len(prompt.requester_messages) == len(requesters)
    assert len(prompt.responder_messages) == len(responders)
    assert all(a is b for a, b in zip(prompt.requester_messages, requesters, strict=True))
    assert all(a is b for a, b in zip(prompt.responder_messages, responders, strict=True))


# -- ChatContent ------------------------------------------------------------------------------


def test_chat_content_defaults_and_accessors() -> None:
    content = ChatContent("<human>")
    assert (content.role, content.message, content.message_id) == ("<human>", "", None)
    assert content.is_requester is False
    assert content.get_role() == "<human>"
    assert content.get_message() == ""
    assert content.get_message_id() is None
    content.set_message("hi")
    content.set_message_id("id-1")
    assert content.get_message() == "hi"
    assert content.get_message_id() == "id-1"
    content.set_message(None)
    assert content.get_message() is None


def test_chat_content_equality_is_identity() -> None:
    a = ChatContent("<bot>", "same", is_requester=False)
    b = ChatContent("<bot>", "same", is_requester=False)
    assert a != b
    assert a == a
    assert (
        repr(a) == "ChatContent(role='<bot>', message='same', message_id=None, is_requester=False)"
    )


def test_chat_content_dict_round_trip_keeps_id_and_side() -> None:
    content = ChatContent("ユーザー", "質問", "m-1", is_requester=True)
    data = content.to_dict()
    assert data == {
        "role": "ユーザー",
        "message": "質問",
        "message_id": "m-1",
        "is_requester": True,
    }
    back = ChatContent.from_dict(json.loads(json.dumps(data)))
    assert back.to_dict() == data
    assert back is not content


def test_chat_content_from_original_dict() -> None:
    # The original's ChatContent dicts have no side; a message may even be missing.
    back = ChatContent.from_dict({"role": "<bot>", "message": None})
    assert back.to_dict() == {
        "role": "<bot>",
        "message": None,
        "message_id": None,
        "is_requester": False,
    }
    assert ChatContent.from_dict({"role": "<bot>"}).message == ""


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"message": "x"}, "has no 'role'"),
        ({"role": 1}, "'role' must be a string, got 1"),
        ({"role": "r", "message": 2}, "'message' must be a string, got 2"),
        ({"role": "r", "message_id": 3}, "'message_id' must be a string, got 3"),
        ({"role": "r", "is_requester": 1}, "'is_requester' must be true or false, got 1"),
    ],
)
def test_chat_content_from_bad_dict(data: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        ChatContent.from_dict(data)


def test_chat_content_vars_and_pickle() -> None:
    content = ChatContent("<bot>", "yes", "m-9", is_requester=False)
    assert vars(content) == {
        "role": "<bot>",
        "message": "yes",
        "message_id": "m-9",
        "is_requester": False,
    }
    back = pickle.loads(pickle.dumps(content))
    assert back.to_dict() == content.to_dict()


# -- RedPajama preset ---------------------------------------------------------------------------


def test_red_pajama_defaults() -> None:
    prompt = RedPajama()
    assert prompt.requester == "<human>"
    assert prompt.responder == "<bot>"
    assert prompt.system == ""
    assert prompt.chat_mode is True
    assert prompt.add_special_tokens is None
    assert prompt.strip_reply is True
    assert prompt.get_replacement_when_input() is None
    assert prompt.get_replacement_when_output() is None
    assert prompt.get_stop_strs() == ["<|endoftext|>", "\n<"]
    assert prompt.create_prompt() == ""
    assert prompt.get_skip_len() == 0


def test_red_pajama_single_turn() -> None:
    prompt = RedPajama()
    prompt.add_requester_msg("Who is Alan Turing")
    prompt.add_responder_msg(None)
    assert prompt.create_prompt() == "<human>: Who is Alan Turing\n<bot>:"
    assert prompt.create_prompt({}) == "<human>: Who is Alan Turing\n<bot>:"
    assert prompt.get_skip_len() == len("<human>: Who is Alan Turing\n<bot>:")


def test_red_pajama_multi_turn_and_omit_last_message() -> None:
    prompt = red_pajama(
        (True, "Who is Alan Turing"),
        (False, "A mathematician."),
        (True, "When was he born?"),
        (False, "In 1912."),
    )
    full = "<human>: Who is Alan Turing\n<bot>: A mathematician.\n<human>: When was he born?\n"
    assert prompt.create_prompt() == full + "<bot>: In 1912.\n"
    assert prompt.create_prompt({"omit_last_message": True}) == full + "<bot>:"
    assert prompt.get_skip_len(omit_last_message=True) == len(full + "<bot>:")
    assert prompt.get_skip_len() == len(full + "<bot>: In 1912.\n")
    # Omitting renders a copy; the stored reply is untouched.
    assert prompt.get_responder_last_msg() == "In 1912."
    assert prompt.get_turn() == 2


def test_red_pajama_system_prefix_has_no_separator() -> None:
    prompt = red_pajama((True, "Hi"), (False, None))
    prompt.set_system("You are kind.")
    assert prompt.get_system() == "You are kind."
    assert prompt.create_prompt() == "You are kind.<human>: Hi\n<bot>:"


def test_red_pajama_empty_string_is_a_message_and_none_is_not() -> None:
    # The original rendered '' like None: "<human>:<bot>:".
    assert red_pajama((True, ""), (False, None)).create_prompt() == "<human>: \n<bot>:"
    assert red_pajama((True, None), (False, None)).create_prompt() == "<human>:<bot>:"
    assert red_pajama((True, "x"), (False, "")).create_prompt() == "<human>: x\n<bot>: \n"


def test_red_pajama_chat_mode_off() -> None:
    prompt = red_pajama((True, "first"), (False, "reply"), (True, "Once upon a time"))
    prompt.set_chat_mode_enabled(False)
    assert prompt.is_chat_mode_enabled() is False
    assert prompt.get_stop_strs() == []
    assert prompt.create_prompt() == "Once upon a time"
    assert prompt.create_prompt({"omit_last_message": True}) == "Once upon a time"
    assert prompt.get_skip_len() == len("Once upon a time")
    empty = RedPajama()
    empty.set_chat_mode_enabled(False)
    empty.set_system("ignored")
    assert empty.create_prompt() == ""
    prompt.set_chat_mode_enabled(True)
    assert prompt.get_stop_strs() == ["<|endoftext|>", "\n<"]


def test_red_pajama_skips_messages_without_role_name() -> None:
    prompt = RedPajama()
    prompt.set_requester("")
    prompt.add_requester_msg("hidden")
    prompt.add_responder_msg(None)
    assert prompt.create_prompt() == "<bot>:"


def test_preset_build_initial_prompt_adds_nothing() -> None:
    for cls in (RedPajama, Rinna):
        prompt = cls.new_conversation()
        assert prompt.is_empty()
        prompt.build_initial_prompt(prompt)
        assert prompt.chat_contents == []


# -- rinna preset --------------------------------------------------------------------------------


def test_rinna_defaults() -> None:
    prompt = Rinna()
    assert prompt.requester == "ユーザー"
    assert prompt.responder == "システム"
    assert prompt.add_special_tokens is False
    assert RedPajama.add_special_tokens is None  # the preset's value does not leak to others
    assert prompt.get_stop_strs() == []
    assert prompt.get_replacement_when_input() == [("\n", "<NL>")]
    assert prompt.get_replacement_when_output() == [("<NL>", "\n")]


def test_rinna_single_turn_has_trailing_space() -> None:
    prompt = Rinna()
    prompt.add_requester_msg(JA_Q1)
    prompt.add_responder_msg(None)
    assert prompt.create_prompt() == f"ユーザー: {JA_Q1}<NL>システム: "


def test_rinna_multi_turn_and_omit_last_message() -> None:
    prompt = Rinna()
    prompt.add_requester_msg(JA_Q1)
    prompt.add_responder_msg(JA_A1)
    prompt.add_requester_msg(JA_Q2)
    prompt.add_responder_msg("ハチ公前<NL>109")
    head = f"ユーザー: {JA_Q1}<NL>システム: {JA_A1}<NL>ユーザー: {JA_Q2}<NL>"
    assert prompt.create_prompt() == head + "システム: ハチ公前<NL>109<NL>"
    assert prompt.create_prompt({"omit_last_message": True}) == head + "システム: "
    prompt.set_system("あなたは案内係です。")
    assert prompt.create_prompt({"omit_last_message": True}) == (
        "あなたは案内係です。" + head + "システム: "
    )


def test_rinna_input_newlines_become_nl_tokens() -> None:
    prompt = Rinna()
    prompt.add_requester_msg("一行目\n二行目\n")
    prompt.add_responder_msg("答え\n")  # replies are stored as given
    assert prompt.get_requester_last_msg() == "一行目<NL>二行目<NL>"
    assert prompt.create_prompt() == "ユーザー: 一行目<NL>二行目<NL><NL>システム: 答え\n<NL>"
    prompt.set_chat_mode_enabled(False)
    assert prompt.create_prompt() == "一行目<NL>二行目<NL>"


def test_rinna_none_input_is_kept() -> None:
    # The original raised AttributeError in replace_string.
    prompt = Rinna()
    prompt.add_requester_msg(None)
    prompt.add_responder_msg(None)
    assert prompt.get_requester_last_msg() is None
    assert prompt.create_prompt() == "ユーザー: システム: "


# -- base class methods (through a user subclass) ------------------------------------------------


def test_abstract_class_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError, match="abstract"):
        AbstractChatPrompt()  # type: ignore[abstract]

    class Incomplete(AbstractChatPrompt):
        def get_stop_strs(self) -> list[str]:
            return []

    with pytest.raises(TypeError, match="create_prompt"):
        Incomplete()  # type: ignore[abstract]


def test_user_subclass_and_new_conversation() -> None:
    prompt = FewShotPrompt.new_conversation()
    assert isinstance(prompt, FewShotPrompt)
    prompt.add_requester_msg("3+3?")
    prompt.add_responder_msg(None)
    assert prompt.create_prompt() == (
        "<user>2+2?</turn><assistant>4</turn><user>3+3?</turn><assistant>"
    )
    assert prompt.get_stop_strs() == ["</turn>"]
    assert prompt.get_turn() == 2
    assert FewShotPrompt().is_empty()  # plain construction adds no context


def test_fresh_state_per_instance() -> None:
    a, b = RedPajama(), RedPajama()
    a.add_requester_msg("only in a")
    assert b.chat_contents == []
    assert b.requester_messages == []
    assert b.responder_messages == []
    assert a.chat_contents is not b.chat_contents


def test_setters_and_getters() -> None:
    prompt = FewShotPrompt()
    prompt.set_requester("Q")
    prompt.set_responder("A")
    assert (prompt.get_requester(), prompt.get_responder()) == ("Q", "A")
    assert prompt.is_requester_role("Q") is True
    assert prompt.is_requester_role("A") is False
    prompt.add_requester_msg("q", message_id="u-1")
    content = prompt.chat_contents[0]
    assert (content.role, content.message, content.message_id) == ("Q", "q", "u-1")
    assert content.is_requester is True


def test_empty_history_edge_cases() -> None:
    prompt = RedPajama()
    assert prompt.is_empty() is True
    assert prompt.get_turn() == 0
    assert prompt.get_requester_last_msg() is None
    assert prompt.get_responder_last_msg() is None
    assert prompt.get_contents() == []
    assert prompt.get_contents({"omit_last_message": True}) == []
    assert prompt.find_chat_content_by_message_id("x") is None
    prompt.clear_last_responder_message()
    assert prompt.remove_last_requester_msg() is None
    assert prompt.remove_last_responder_msg() is None
    with pytest.raises(LocalProtocolError, match="cannot set the reply text: the history is empty"):
        prompt.set_responder_last_msg("x")
    with pytest.raises(LocalProtocolError, match="cannot set the reply id: the history is empty"):
        prompt.set_responder_last_msg_id("x")
    assert prompt.is_empty() is True


def test_get_contents_returns_new_list_of_same_objects() -> None:
    prompt = red_pajama((True, "a"), (False, "b"))
    contents = prompt.get_contents()
    assert contents is not prompt.chat_contents
    assert contents[0] is prompt.chat_contents[0]
    assert contents[1] is prompt.chat_contents[1]
    contents.clear()
    assert len(prompt.chat_contents) == 2


def test_get_contents_omit_last_message_copies() -> None:
    prompt = red_pajama((True, "a"))
    prompt.add_responder_msg("b", message_id="r-1")
    contents = prompt.get_contents({"omit_last_message": True})
    assert contents[0] is prompt.chat_contents[0]
    last = contents[1]
    assert last is not prompt.chat_contents[1]
    assert last.to_dict() == {
        "role": "<bot>",
        "message": None,
        "message_id": "r-1",
        "is_requester": False,
    }
    assert prompt.chat_contents[1].message == "b"
    assert [c.message for c in prompt.get_contents({"omit_last_message": False})] == ["a", "b"]


def test_get_contents_to_message_id() -> None:
    prompt = RedPajama()
    prompt.add_requester_msg("q1")
    prompt.add_responder_msg("a1", message_id="r-1")
    prompt.add_requester_msg("q2")
    prompt.add_responder_msg("a2", message_id="r-2")

    def messages(opts: PromptOptions) -> list[str | None]:
        return [c.message for c in prompt.get_contents(opts)]

    assert messages({"to_message_id": "r-1"}) == ["q1", "a1"]
    assert messages({"to_message_id": "r-2"}) == ["q1", "a1", "q2", "a2"]
    # Unknown id or None: the whole history, as the original did.
    assert messages({"to_message_id": "nope"}) == ["q1", "a1", "q2", "a2"]
    assert messages({"to_message_id": None}) == ["q1", "a1", "q2", "a2"]
    # omit_last_message applies to the history's last message only, as in the original.
    assert messages({"to_message_id": "r-1", "omit_last_message": True}) == ["q1", "a1"]
    assert messages({"to_message_id": "r-2", "omit_last_message": True}) == ["q1", "a1", "q2", None]
    assert prompt.create_prompt({"to_message_id": "r-1"}) == "<human>: q1\n<bot>: a1\n"


def test_find_chat_content_by_message_id() -> None:
    prompt = red_pajama((True, "q"))  # no id
    prompt.add_responder_msg("a", message_id="r-1")
    prompt.add_responder_msg("b", message_id="r-1")
    found = prompt.find_chat_content_by_message_id("r-1")
    assert found is prompt.chat_contents[1]  # the first one
    assert prompt.find_chat_content_by_message_id("r-2") is None
    # None never matches a message that has no id.
    assert prompt.find_chat_content_by_message_id(None) is None


def test_last_message_getters() -> None:
    prompt = red_pajama((True, "q1"), (False, "a1"), (True, "q2"))
    assert prompt.get_requester_last_msg() == "q2"
    assert prompt.get_responder_last_msg() == "a1"
    prompt.add_responder_msg(None)
    assert prompt.get_responder_last_msg() is None


def test_clear_last_responder_message() -> None:
    prompt = red_pajama((True, "q"))
    prompt.add_responder_msg("a", message_id="r-1")
    prompt.clear_last_responder_message()
    assert prompt.get_responder_last_msg() is None
    assert prompt.chat_contents[-1].message_id == "r-1"
    assert prompt.create_prompt() == "<human>: q\n<bot>:"
    # Last message is the user's: nothing changes.
    prompt.add_requester_msg("q2")
    prompt.clear_last_responder_message()
    assert [c.message for c in prompt.chat_contents] == ["q", None, "q2"]


def test_remove_last_requester_msg() -> None:
    prompt = red_pajama((True, "q1"), (True, "q2"))
    removed = prompt.remove_last_requester_msg()
    assert removed is not None
    assert removed.message == "q2"
    assert [c.message for c in prompt.requester_messages] == ["q1"]
    assert [c.message for c in prompt.chat_contents] == ["q1"]
    prompt.add_responder_msg("a1")
    assert prompt.remove_last_requester_msg() is None  # last is the responder's
    assert [c.message for c in prompt.chat_contents] == ["q1", "a1"]
    assert_sides_in_step(prompt)


def test_remove_last_responder_msg() -> None:
    prompt = red_pajama((True, "q1"), (False, "a1"), (False, "a2"))
    removed = prompt.remove_last_responder_msg()
    assert removed is not None
    assert removed.message == "a2"
    assert [c.message for c in prompt.responder_messages] == ["a1"]
    prompt.add_requester_msg("q2")
    assert prompt.remove_last_responder_msg() is None  # last is the requester's
    assert [c.message for c in prompt.chat_contents] == ["q1", "a1", "q2"]
    assert_sides_in_step(prompt)


def test_set_responder_last_msg_and_id() -> None:
    prompt = red_pajama((True, "q"), (False, None))
    prompt.set_responder_last_msg("partial")
    prompt.set_responder_last_msg_id("r-1")
    assert prompt.get_responder_last_msg() == "partial"
    assert prompt.responder_messages[-1] is prompt.chat_contents[-1]
    assert prompt.chat_contents[-1].message_id == "r-1"
    assert prompt.create_prompt() == "<human>: q\n<bot>: partial\n"


def test_set_responder_last_msg_never_overwrites_user_message() -> None:
    # The original wrote chat_contents[-1] blindly: the user's text became the reply.
    prompt = red_pajama((True, "q1"), (False, "a1"), (True, "q2"))
    with pytest.raises(LocalProtocolError, match="ends with a user message"):
        prompt.set_responder_last_msg("reply")
    with pytest.raises(LocalProtocolError, match="ends with a user message"):
        prompt.set_responder_last_msg_id("r-9")
    assert [c.message for c in prompt.chat_contents] == ["q1", "a1", "q2"]
    assert prompt.chat_contents[-1].message_id is None
    assert prompt.get_responder_last_msg() == "a1"


def test_replace_string() -> None:
    prompt = RedPajama()
    assert prompt.replace_string(None, [("a", "b")]) is None
    assert prompt.replace_string("abc", None) == "abc"
    assert prompt.replace_string("abc", []) == "abc"
    # Pairs apply in order, so the second sees the first's output.
    assert prompt.replace_string("a-a", [("a", "b"), ("b", "c")]) == "c-c"


def test_clear_keeps_system_roles_and_mode() -> None:
    prompt = red_pajama((True, "q"), (False, "a"))
    prompt.set_system("S")
    prompt.set_chat_mode_enabled(False)
    prompt.clear()
    assert prompt.is_empty()
    assert prompt.requester_messages == []
    assert prompt.responder_messages == []
    assert (prompt.system, prompt.requester, prompt.responder) == ("S", "<human>", "<bot>")
    assert prompt.chat_mode is False


def test_same_role_name_for_both_sides() -> None:
    # The original counted every message as the responder's when both roles were equal.
    prompt = RedPajama()
    prompt.set_requester("AI")
    prompt.set_responder("AI")
    prompt.add_requester_msg("q")
    prompt.add_responder_msg(None)
    assert prompt.get_turn() == 1
    assert prompt.get_requester_last_msg() == "q"
    assert prompt.get_responder_last_msg() is None
    assert prompt.remove_last_requester_msg() is None
    prompt.set_responder_last_msg("a")
    assert prompt.create_prompt() == "AI: q\nAI: a\n"
    back = RedPajama.from_dict(json.loads(json.dumps(prompt.to_dict())))
    assert [c.is_requester for c in back.chat_contents] == [True, False]
    assert back.get_turn() == 1
    assert_sides_in_step(back)


# -- serialisation -------------------------------------------------------------------------------


def sample_rinna() -> Rinna:
    prompt = Rinna()
    prompt.set_system("前置き")
    prompt.add_requester_msg("一\n二", message_id="u-1")
    prompt.add_responder_msg("答え", message_id="r-1")
    prompt.add_requester_msg("")
    prompt.add_responder_msg(None, message_id="r-2")
    return prompt


def test_to_dict_exact() -> None:
    assert sample_rinna().to_dict() == {
        "system": "前置き",
        "requester": "ユーザー",
        "responder": "システム",
        "chat_mode": True,
        "contents": [
            {"role": "ユーザー", "message": "一<NL>二", "message_id": "u-1", "is_requester": True},
            {"role": "システム", "message": "答え", "message_id": "r-1", "is_requester": False},
            {"role": "ユーザー", "message": "", "message_id": None, "is_requester": True},
            {"role": "システム", "message": None, "message_id": "r-2", "is_requester": False},
        ],
    }


def test_json_round_trip_is_lossless_with_shared_identity() -> None:
    prompt = sample_rinna()
    prompt.set_chat_mode_enabled(False)
    text = json.dumps(prompt.to_dict(), ensure_ascii=False)
    back = Rinna.from_dict(json.loads(text))
    assert type(back) is Rinna
    assert back.to_dict() == prompt.to_dict()
    assert back.find_chat_content_by_message_id("r-1") is back.chat_contents[1]
    assert back.responder_messages[0] is back.chat_contents[1]
    assert back.requester_messages[1] is back.chat_contents[2]
    assert_sides_in_step(back)
    back.set_chat_mode_enabled(True)
    prompt.set_chat_mode_enabled(True)
    assert back.create_prompt() == prompt.create_prompt()
    assert (
        back.create_prompt()
        == "前置きユーザー: 一<NL>二<NL>システム: 答え<NL>ユーザー: <NL>システム: "
    )


def test_from_dict_defaults_come_from_the_class() -> None:
    assert Rinna.from_dict({}).to_dict() == Rinna().to_dict()
    back = RedPajama.from_dict({"contents": [{"role": "<human>", "is_requester": True}]})
    assert back.create_prompt() == "<human>: \n"


def test_from_dict_replaces_history_built_by_init() -> None:
    class Seeded(FewShotPrompt):
        def __init__(self) -> None:
            super().__init__()
            self.add_requester_msg("from __init__")

    back = Seeded.from_dict({"contents": []})
    assert back.is_empty()
    assert back.requester_messages == []


def test_from_dict_reads_the_original_format() -> None:
    # What the original's __dict__() produced: separate copies per list and no side.
    original: dict[str, Any] = {
        "system": "",
        "chat_contents": [
            {"role": "<human>", "message": "Who is Alan Turing", "message_id": None},
            {"role": "<bot>", "message": "A mathematician.", "message_id": "r-1"},
        ],
        "responder_messages": [
            {"role": "<bot>", "message": "A mathematician.", "message_id": "r-1"}
        ],
        "requester_messages": [
            {"role": "<human>", "message": "Who is Alan Turing", "message_id": None}
        ],
        "requester": "<human>",
        "responder": "<bot>",
        "chat_mode": True,
    }
    back = RedPajama.from_dict(original)
    assert [c.is_requester for c in back.chat_contents] == [True, False]
    assert back.chat_contents[1].message_id == "r-1"
    assert back.create_prompt() == "<human>: Who is Alan Turing\n<bot>: A mathematician.\n"
    assert_sides_in_step(back)
    # A role name shared by both sides goes to the responder, as the original decided.
    tie = RedPajama.from_dict(
        {"requester": "X", "responder": "X", "chat_contents": [{"role": "X", "message": "m"}]}
    )
    assert tie.chat_contents[0].is_requester is False
    assert tie.get_turn() == 0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"system": 1}, "'system' must be a string, got 1"),
        ({"requester": None}, "'requester' must be a string, got None"),
        ({"responder": b"x"}, "'responder' must be a string"),
        ({"chat_mode": "yes"}, "'chat_mode' must be true or false, got 'yes'"),
        ({"contents": "abc"}, "'contents' must be a list, got 'abc'"),
        ({"contents": [["role", "x"]]}, "a chat content must be a mapping"),
        ({"contents": [{"message": "x"}]}, "has no 'role'"),
    ],
)
def test_from_dict_rejects_bad_data(data: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        RedPajama.from_dict(data)


def test_pickle_round_trip_and_vars() -> None:
    prompt = sample_rinna()
    state = vars(prompt)
    assert isinstance(state, dict)
    assert state["system"] == "前置き"
    assert state["chat_contents"] is prompt.chat_contents
    back = pickle.loads(pickle.dumps(prompt))
    assert type(back) is Rinna
    assert back.to_dict() == prompt.to_dict()
    assert back.responder_messages[0] is back.chat_contents[1]
    assert back.requester_messages[0] is back.chat_contents[0]
    # The original's method named __dict__ is gone; to_dict replaces it.
    assert isinstance(prompt.__dict__, dict)
    assert isinstance(prompt.chat_contents[0].__dict__, dict)


# -- properties ----------------------------------------------------------------------------------

_TEXT = st.one_of(st.none(), st.text(alphabet="ab \n<>:N", max_size=6))
_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "add_requester",
                "add_responder",
                "clear_last_responder",
                "remove_requester",
                "remove_responder",
                "set_responder_text",
                "set_responder_id",
            ]
        ),
        _TEXT,
    ),
    max_size=25,
)


def apply(prompt: AbstractChatPrompt, op: str, text: str | None) -> None:
    if op == "add_requester":
        prompt.add_requester_msg(text, message_id=text)
    elif op == "add_responder":
        prompt.add_responder_msg(text, message_id=text)
    elif op == "clear_last_responder":
        prompt.clear_last_responder_message()
    elif op == "remove_requester":
        prompt.remove_last_requester_msg()
    elif op == "remove_responder":
        prompt.remove_last_responder_msg()
    else:
        last_is_responder = bool(prompt.chat_contents) and not prompt.chat_contents[-1].is_requester
        try:
            if op == "set_responder_text":
                prompt.set_responder_last_msg(text)
            else:
                prompt.set_responder_last_msg_id(text)
        except LocalProtocolError:
            assert not last_is_responder
        else:
            assert last_is_responder


def reference_render(prompt: RedPajama | Rinna, omit_last: bool) -> str:
    """The inventory's formula, written independently of the implementation."""
    closed, opened = (
        ("{}: {}\n", "{}:") if isinstance(prompt, RedPajama) else ("{}: {}<NL>", "{}: ")
    )
    out = prompt.system
    for index, content in enumerate(prompt.chat_contents):
        message = None if omit_last and index == len(prompt.chat_contents) - 1 else content.message
        out += (
            opened.format(content.role) if message is None else closed.format(content.role, message)
        )
    return out


@settings(database=None, max_examples=200)
@given(ops=_OPS, rinna=st.booleans(), system=st.text(max_size=3))
def test_history_invariants(ops: list[tuple[str, str | None]], rinna: bool, system: str) -> None:
    prompt: RedPajama | Rinna = Rinna() if rinna else RedPajama()
    prompt.set_system(system)
    for op, text in ops:
        apply(prompt, op, text)
        assert_sides_in_step(prompt)
    assert prompt.get_turn() == sum(c.is_requester for c in prompt.chat_contents)
    assert prompt.is_empty() is (not prompt.chat_contents)

    full = prompt.create_prompt()
    omitted = prompt.create_prompt({"omit_last_message": True})
    assert full == reference_render(prompt, omit_last=False)
    assert omitted == reference_render(prompt, omit_last=True)
    # The echo of the prompt ends where the last message's text starts.
    assert full.startswith(omitted)
    assert prompt.get_skip_len(omit_last_message=True) == len(omitted)

    for back in (
        type(prompt).from_dict(json.loads(json.dumps(prompt.to_dict()))),
        pickle.loads(pickle.dumps(prompt)),
    ):
        assert back.to_dict() == prompt.to_dict()
        assert back.create_prompt() == full
        assert_sides_in_step(back)
