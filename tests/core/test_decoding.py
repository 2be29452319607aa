"""Tests of the incremental detokenizer against a real byte-level BPE tokenizer.

The reference for every property is the whole-text computation: decode the ids up to the
first stop token, cut at the earliest stop string, strip, replace in one left-to-right pass.
The streaming decoder must give exactly that, whatever the chunking, and every text it has
emitted so far must be a prefix of it (so no part of a stop string is ever sent).
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatstream.core.decoding import (
    DecoderStop,
    DecodingOptions,
    Detokenizer,
    IncrementalDecoder,
    StopStringMatcher,
    StreamReplacer,
    apply_replacements,
)
from chatstream.core.errors import ConfigError

from .bpe import BPETokenizer, byte_level_bpe

TOK: BPETokenizer = byte_level_bpe()
IM_START = TOK.token_id("<|im_start|>")
EOS = TOK.token_id("<|eos|>")
NON_SPECIAL = sorted(set(range(TOK.vocab_size)) - TOK.special_ids)
FFFD = "\ufffd"

# --------------------------------------------------------------------------- references


def reference_replace(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """One left-to-right pass; at each position the first pair (in order) that matches wins."""
    out: list[str] = []
    i = 0
    while i < len(text):
        for old, new in pairs:
            if text[i : i + len(old)] == old:
                out.append(new)
                i += len(old)
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def reference_cut(raw: str, stops: Sequence[str]) -> int | None:
    """Where the earliest occurrence of any stop string starts."""
    starts = [raw.find(s) for s in stops if s in raw]
    return min(starts) if starts else None


def reference_emitted(received: str, stops: Sequence[str]) -> str:
    """What a matcher may have emitted after receiving ``received``: everything before the
    earliest point where a stop string occurs or could still begin."""
    cut = reference_cut(received, stops)
    # Whole tails of the text that are proper prefixes of a stop string could still grow.
    open_starts = [
        i
        for i in range(len(received))
        if any(len(s) > len(received) - i and s.startswith(received[i:]) for s in stops)
    ]
    hold = min(open_starts, default=len(received))
    if cut is not None and cut <= hold:
        return received[:cut]
    return received[:hold]


@dataclass(frozen=True)
class Expected:
    text: str
    stopped: DecoderStop | None
    #: The decoded ids before any stop token: valid UTF-8 iff it has no U+FFFD.
    raw: str


def reference(
    ids: Sequence[int], options: DecodingOptions, detokenizer: Detokenizer = TOK
) -> Expected:
    stop_at = next((i for i, t in enumerate(ids) if t in options.stop_token_ids), None)
    # A reply never ends in U+FFFD: the bytes of a character it ends inside are dropped.
    raw = detokenizer.decode(list(ids if stop_at is None else ids[:stop_at])).rstrip(FFFD)
    cut = reference_cut(raw, options.stop_strings)
    text = raw if cut is None else raw[:cut]
    if options.strip_leading_whitespace:
        text = text.lstrip()
    if cut is not None:
        stopped: DecoderStop | None = DecoderStop.STOP_STRING
    elif stop_at is not None:
        stopped = DecoderStop.STOP_TOKEN
    else:
        stopped = None
    return Expected(reference_replace(text, options.replacements), stopped, raw)


# ------------------------------------------------------------------------------ helpers


@dataclass
class CountingDetokenizer:
    """A proxy that records every decode call."""

    inner: Detokenizer
    calls: list[tuple[int, ...]] = field(default_factory=list)

    def decode(self, token_ids: Sequence[int], /) -> str:
        self.calls.append(tuple(token_ids))
        return self.inner.decode(token_ids)

    @property
    def ids_decoded(self) -> int:
        return sum(len(c) for c in self.calls)


@dataclass(frozen=True)
class Run:
    deltas: list[str]
    stopped: DecoderStop | None

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def stream(
    chunks: Sequence[Sequence[int]],
    options: DecodingOptions = DecodingOptions(),  # noqa: B008 - frozen, never mutated
    *,
    expected: str | None = None,
    detokenizer: Detokenizer = TOK,
    context: Sequence[int] = (),
) -> Run:
    """Push ``chunks`` then finish; if ``expected`` is given, check the prefix property."""
    decoder = IncrementalDecoder(detokenizer, options, context_token_ids=context)
    assert decoder.stopped is None
    deltas: list[str] = []
    for chunk in chunks:
        was_stopped = decoder.stopped is not None
        deltas.append(decoder.push(chunk))
        if was_stopped:
            assert deltas[-1] == ""
        if any(t in options.stop_token_ids for t in chunk):
            assert decoder.stopped is not None  # at once, not only at finish
        if expected is not None:
            emitted = "".join(deltas)
            assert expected.startswith(emitted), (emitted, expected)
    stopped_before_finish = decoder.stopped
    deltas.append(decoder.finish())
    if stopped_before_finish is not None:
        assert deltas[-1] == ""
        assert decoder.stopped is stopped_before_finish
    assert decoder.finish() == ""  # a second finish has nothing left
    return Run(deltas, decoder.stopped)


def split(data: st.DataObject, seq: Sequence[int]) -> list[list[int]]:
    """``seq`` in random chunks (empty chunks included)."""
    cuts = data.draw(st.lists(st.integers(0, len(seq)), max_size=8))
    bounds = [0, *sorted(cuts), len(seq)]
    return [list(seq[a:b]) for a, b in itertools.pairwise(bounds)]


def check_all_chunkings(data: st.DataObject, ids: Sequence[int], options: DecodingOptions) -> None:
    expected = reference(ids, options)
    chunkings = {
        "one at a time": [[t] for t in ids],
        "all at once": [list(ids)],
        "random chunks": split(data, ids),
    }
    for how, chunks in chunkings.items():
        run = stream(chunks, options, expected=expected.text)
        assert run.text == expected.text, how
        assert run.stopped is expected.stopped, how
        if FFFD not in expected.raw:  # valid UTF-8: no delta ever has a U+FFFD
            assert not any(FFFD in d for d in run.deltas), (how, run.deltas)
        if not options.replacements:
            assert not any(s in run.text for s in options.stop_strings), how


# --------------------------------------------------------------------------- strategies

WORDS = ["the", "quick", "brown", "fox", "stream", "token", "chat", "model", "hello", "trio"]
FRAGMENTS = [
    *WORDS,
    "こんにちは",
    "世界",
    "猫",
    "日本語",
    "テスト",
    "🙂",
    "🎉",
    "👍🏽",
    "é",
    "<NL>",
    "<bot>",
    "<human>",
    "<",
    ">",
    "\n",
    " ",
    "  ",
]
STOP_CANDIDATES = ["<bot>", "bo", "ot", "\n<", "<human>", "<", "NL>", "世界", "🙂", "界🙂", "o"]
REPLACEMENT_CANDIDATES = [
    ("<NL>", "\n"),
    ("<bot>", "B"),
    ("<", "&lt;"),
    ("<N", "[n]"),
    ("o", "0"),
    ("hello", ""),
    ("🙂", ":)"),
    ("NL", "nl"),
]

texts = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(st.characters(codec="utf-8", exclude_characters=FFFD), max_size=3),
    ),
    max_size=20,
).map("".join)


def draw_options(data: st.DataObject, raw: str, ids: Sequence[int]) -> DecodingOptions:
    stop_choices: st.SearchStrategy[str] = st.sampled_from(STOP_CANDIDATES)
    if raw:
        substrings = st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 6)).map(
            lambda p: raw[p[0] : p[0] + p[1]]
        )
        stop_choices = stop_choices | substrings
    token_choices = st.sampled_from([EOS, *NON_SPECIAL[:50]])
    if ids:
        token_choices = token_choices | st.sampled_from(list(ids))
    return DecodingOptions(
        stop_strings=tuple(data.draw(st.lists(stop_choices, max_size=3))),
        stop_token_ids=data.draw(st.frozensets(token_choices, max_size=2)),
        replacements=tuple(
            data.draw(st.lists(st.sampled_from(REPLACEMENT_CANDIDATES), max_size=3))
        ),
        strip_leading_whitespace=data.draw(st.booleans()),
    )


# ------------------------------------------------------------- properties of the decoder


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_encoded_text_any_chunking_gives_reference(data: st.DataObject) -> None:
    text = data.draw(texts, label="text")
    ids = TOK.encode(text)
    assert TOK.decode(ids) == text  # the tokenizer round-trips, so raw is the text
    options = draw_options(data, text, ids)
    check_all_chunkings(data, ids, options)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_token_ids_any_chunking_gives_reference(data: st.DataObject) -> None:
    ids = data.draw(st.lists(st.sampled_from(NON_SPECIAL), max_size=30), label="ids")
    options = draw_options(data, TOK.decode(ids), ids)
    check_all_chunkings(data, ids, options)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_runs_of_silent_tokens_change_nothing(data: st.DataObject) -> None:
    """Special tokens decode to nothing; long runs of them are dropped from the window."""
    segments = data.draw(
        st.lists(
            st.one_of(
                texts.map(TOK.encode),
                st.lists(st.sampled_from(NON_SPECIAL), max_size=3),
                st.integers(1, 80).map(lambda n: [IM_START] * n),
            ),
            max_size=6,
        ),
        label="segments",
    )
    ids = [t for segment in segments for t in segment]
    options = draw_options(data, TOK.decode(ids), ids)
    check_all_chunkings(data, ids, options)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_stop_string_matcher_any_chunking(data: st.DataObject) -> None:
    """A small alphabet makes overlapping stop strings ("aba" and "b") common."""
    text = data.draw(st.text("ab<>", max_size=16), label="text")
    stop = st.text("ab<>", min_size=1, max_size=4)
    if text:  # substrings of the text, so that stop strings do occur
        stop |= st.tuples(st.integers(0, len(text) - 1), st.integers(1, 4)).map(
            lambda p: text[p[0] : p[0] + p[1]]
        )
    stops = tuple(data.draw(st.lists(stop, max_size=3)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    cut = reference_cut(text, stops)
    expected = text if cut is None else text[:cut]
    matcher = StopStringMatcher(stops)
    out = ""
    for a, b in itertools.pairwise([0, *cuts, len(text)]):
        out += matcher.push(text[a:b])
        assert expected.startswith(out), (out, expected)
        # It holds back no more than it must.
        assert out == reference_emitted(text[:b], stops), (text[:b], stops)
    out += matcher.flush()
    assert out == expected
    assert matcher.stopped is (cut is not None)
    if matcher.stopped:
        assert matcher.push("more") == ""


small_pairs = st.lists(
    st.tuples(st.text("ab<", min_size=1, max_size=3), st.text("XY", max_size=2)), max_size=3
).map(tuple)


@settings(max_examples=300, deadline=None)
@given(st.text("ab<c", max_size=16), small_pairs, st.data())
def test_replacements_match_reference(
    text: str, pairs: tuple[tuple[str, str], ...], data: st.DataObject
) -> None:
    expected = reference_replace(text, pairs)
    assert apply_replacements(text, pairs) == expected
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    replacer = StreamReplacer(pairs)
    out = ""
    for a, b in itertools.pairwise([0, *cuts, len(text)]):
        out += replacer.push(text[a:b])
        assert expected.startswith(out), (out, expected)
    assert out + replacer.flush() == expected


# ------------------------------------------------------------------ per-step work bound


def long_ascii_ids(n: int) -> list[int]:
    words = itertools.cycle([*WORDS, "<NL>", "x", "!", "\n"])
    text = ""
    while len(TOK.encode(text)) < n:
        text += " ".join(next(words) for _ in range(50)) + " "
    return TOK.encode(text)[:n]


@pytest.mark.parametrize("chunk", [1, 3])
def test_decode_work_is_linear_in_tokens(chunk: int) -> None:
    ids = long_ascii_ids(2000)
    counter = CountingDetokenizer(TOK)
    chunks = [ids[i : i + chunk] for i in range(0, len(ids), chunk)]
    options = DecodingOptions(stop_strings=("<human>",), replacements=(("<NL>", "\n"),))
    run = stream(chunks, options, detokenizer=counter)
    assert run.text == reference(ids, options).text
    assert counter.ids_decoded <= 20 * len(ids)
    # No single call re-decodes the reply: each sees only a few recent tokens.
    assert max(len(c) for c in counter.calls) <= 2 * chunk + 2


def test_decode_work_is_bounded_for_tokens_that_decode_to_nothing() -> None:
    words = TOK.encode(" hello world")
    ids = words + [IM_START] * 2000 + words + [IM_START] * 500 + words
    counter = CountingDetokenizer(TOK)
    run = stream([[t] for t in ids], detokenizer=counter)
    assert run.text == " hello world" * 3
    assert counter.ids_decoded <= 40 * len(ids)  # re-decoding everything would be ~1000x
    assert max(len(c) for c in counter.calls) <= 40


# --------------------------------------------------------------------------- unit tests


def test_stop_string_spanning_two_tokens() -> None:
    ids = TOK.encode("Hi\n<human>: x")
    pieces = [TOK.decode([t]) for t in ids]
    assert pieces[2:4] == ["\n", "<"]  # the stop string "\n<" spans two tokens
    options = DecodingOptions(stop_strings=("\n<",))
    decoder = IncrementalDecoder(TOK, options)
    deltas = [decoder.push([t]) for t in ids[:3]]
    assert deltas == ["H", "i", ""]  # "\n" is held back: it may start "\n<"
    assert decoder.stopped is None
    assert decoder.push(ids[3:4]) == ""
    assert decoder.stopped is DecoderStop.STOP_STRING
    assert decoder.push(ids[4:]) == ""
    assert decoder.finish() == ""


def test_partial_stop_string_is_held_then_released_at_finish() -> None:
    ids = TOK.encode("a <hum")
    decoder = IncrementalDecoder(TOK, DecodingOptions(stop_strings=("<human>",)))
    assert "".join(decoder.push([t]) for t in ids) == "a "
    assert decoder.finish() == "<hum"
    assert decoder.stopped is None


def test_held_stop_prefix_is_released_when_it_cannot_complete() -> None:
    decoder = IncrementalDecoder(TOK, DecodingOptions(stop_strings=("<human>",)))
    assert decoder.push(TOK.encode("a <hum")) == "a "
    assert decoder.push(TOK.encode("ble")) == "<humble"
    assert decoder.finish() == ""


def test_overlapping_stop_strings_cut_at_the_earliest_start() -> None:
    """Regression: "bo" completes before "<bot>", but "<bot>" starts earlier."""
    ids = TOK.encode("x <bot> y")
    options = DecodingOptions(stop_strings=("<bot>", "bo"))
    for chunks in ([[t] for t in ids], [ids]):
        run = stream(chunks, options, expected="x ")
        assert run.text == "x "
        assert run.stopped is DecoderStop.STOP_STRING


def test_overlapping_stop_strings_shorter_one_wins_when_longer_never_completes() -> None:
    options = DecodingOptions(stop_strings=("<bot>", "bo"))
    decoder = IncrementalDecoder(TOK, options)
    assert decoder.push(TOK.encode("x <bo")) == "x "
    assert decoder.stopped is None  # "<bo" may still become "<bot>"
    assert decoder.finish() == "<"  # it did not: cut at "bo"
    assert decoder.stopped is DecoderStop.STOP_STRING
    other = IncrementalDecoder(TOK, options)
    assert other.push(TOK.encode("x <bo y")) == "x <"
    assert other.stopped is DecoderStop.STOP_STRING


def test_stop_string_matcher_stops_as_soon_as_the_cut_is_certain() -> None:
    matcher = StopStringMatcher(("ab", "abc"))
    assert matcher.push("xab") == "x"  # "abc" could still follow, but it would cut there too
    assert matcher.stopped
    assert matcher.flush() == ""


def test_many_long_stop_strings_sharing_prefixes() -> None:
    # 16 stop strings of 256 characters, all but the last character alike: the text holds
    # one of them after a near miss of each of the others.
    stem = "x" * 255
    stops = tuple(stem + chr(ord("a") + i) for i in range(16))
    near_misses = "".join(stem + "?" for _ in range(16))
    text = "hello " + near_misses + stops[9] + " after"
    matcher = StopStringMatcher(stops)
    out = "".join(matcher.push(text[i : i + 3]) for i in range(0, len(text), 3))
    assert matcher.stopped
    assert out == "hello " + near_misses


def test_empty_stop_strings_are_no_stop() -> None:
    matcher = StopStringMatcher(("", "end"))
    assert matcher.push("a") == "a"
    assert matcher.push("b en") == "b "
    assert matcher.flush() == "en"
    assert not matcher.stopped


def test_stop_string_found_only_at_finish_sets_stopped() -> None:
    """Regression: the window holds "a<" plus a partial character until finish."""
    ids = TOK.encode("a<") + TOK.encode("🎉")[:1]
    decoder = IncrementalDecoder(TOK, DecodingOptions(stop_strings=("<",)))
    assert decoder.push(ids) == ""
    assert decoder.finish() == "a"
    assert decoder.stopped is DecoderStop.STOP_STRING


def test_nl_replacement_split_across_chunks() -> None:
    ids = TOK.encode("one<NL>two")
    assert [TOK.decode([t]) for t in ids][3:6] == ["<", "NL", ">"]
    decoder = IncrementalDecoder(TOK, DecodingOptions(replacements=(("<NL>", "\n"),)))
    deltas = [decoder.push([t]) for t in ids]
    assert deltas == ["o", "n", "e", "", "", "\n", "t", "w", "o"]
    assert decoder.finish() == ""


def test_trailing_partial_replacement_is_released_unchanged_at_finish() -> None:
    decoder = IncrementalDecoder(TOK, DecodingOptions(replacements=(("<NL>", "\n"),)))
    assert "".join(decoder.push([t]) for t in TOK.encode("end<N")) == "end"
    assert decoder.finish() == "<N"  # the original dropped this tail


def test_stop_token_ends_the_reply_and_later_pushes_are_ignored() -> None:
    options = DecodingOptions(stop_token_ids=frozenset({EOS}), replacements=(("<NL>", "\n"),))
    decoder = IncrementalDecoder(TOK, options)
    assert decoder.push(TOK.encode("hi <N")) == "hi "
    # The held "<N" is released when the stop token ends the reply; the rest is ignored.
    assert decoder.push([*TOK.encode("L"), EOS, *TOK.encode("> more")]) == "<NL"
    assert decoder.stopped is DecoderStop.STOP_TOKEN
    assert decoder.push(TOK.encode("ignored")) == ""
    assert decoder.finish() == ""
    assert decoder.stopped is DecoderStop.STOP_TOKEN


def test_stop_token_flushes_a_partial_character() -> None:
    ids = [*TOK.encode("ok "), *TOK.encode("🎉")[:2], EOS]
    run = stream([ids], DecodingOptions(stop_token_ids=frozenset({EOS})))
    assert run.deltas == ["ok ", ""]  # the half character is dropped, not shown as U+FFFD
    assert run.stopped is DecoderStop.STOP_TOKEN


def test_stop_string_before_stop_token_wins() -> None:
    options = DecodingOptions(stop_strings=("<bot>",), stop_token_ids=frozenset({EOS}))
    run = stream([[*TOK.encode("a <bot> b"), EOS]], options)
    assert run.text == "a "
    assert run.stopped is DecoderStop.STOP_STRING


def test_finish_after_a_stop_string_returns_nothing() -> None:
    decoder = IncrementalDecoder(TOK, DecodingOptions(stop_strings=("world",)))
    assert decoder.push(TOK.encode("hello world again")) == "hello "
    assert decoder.stopped is DecoderStop.STOP_STRING
    assert decoder.finish() == ""


def test_strip_leading_whitespace() -> None:
    ids = TOK.encode("   \n hello  world")
    options = DecodingOptions(strip_leading_whitespace=True)
    for chunks in ([[t] for t in ids], [ids]):
        assert stream(chunks, options).text == "hello  world"
    assert stream([ids]).text == "   \n hello  world"


def test_strip_leading_whitespace_applies_before_replacements() -> None:
    options = DecodingOptions(strip_leading_whitespace=True, replacements=(("<NL>", "\n"),))
    assert stream([[t] for t in TOK.encode("  <NL> x")], options).text == "\n x"


@pytest.mark.parametrize(
    ("kwargs", "option", "message"),
    [
        ({"stop_strings": ("",)}, "stop_strings", "non-empty strings"),
        ({"stop_strings": ("a", 3)}, "stop_strings", "non-empty strings"),
        ({"stop_strings": "</s>"}, "stop_strings", "sequence of strings"),
        ({"replacements": (("", "x"),)}, "replacements", "non-empty string to replace"),
        ({"replacements": (("a", 1),)}, "replacements", "non-empty string to replace"),
        ({"replacements": ((1, "x"),)}, "replacements", "non-empty string to replace"),
        ({"replacements": (("a",),)}, "replacements", r"\(old, new\) pairs"),
        ({"replacements": ("ab",)}, "replacements", r"\(old, new\) pairs"),
        ({"replacements": (3,)}, "replacements", r"\(old, new\) pairs"),
        ({"replacements": "ab"}, "replacements", r"sequence of \(old, new\) pairs"),
    ],
)
def test_options_validation(kwargs: dict[str, object], option: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{option}: .*{message}") as caught:
        DecodingOptions(**kwargs)  # type: ignore[arg-type]
    assert caught.value.option == option
    assert isinstance(caught.value, ValueError)


def test_options_are_normalised() -> None:
    options = DecodingOptions(
        stop_strings=["a"],  # type: ignore[arg-type]
        stop_token_ids={1, 2},  # type: ignore[arg-type]
        replacements=[["x", "y"]],  # type: ignore[arg-type]
    )
    assert options.stop_strings == ("a",)
    assert options.stop_token_ids == frozenset({1, 2})
    assert options.replacements == (("x", "y"),)


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ((("ab", "X"), ("a", "Y")), "YXY"),
        ((("a", "Y"), ("ab", "X")), "YYbY"),
    ],
)
def test_stream_replacer_priority(pairs: tuple[tuple[str, str], ...], expected: str) -> None:
    assert apply_replacements("aaba", pairs) == expected
    replacer = StreamReplacer(pairs)
    out = "".join(replacer.push(c) for c in "aaba")
    assert out + replacer.flush() == expected


def test_stream_replacer_without_pairs_passes_text_through() -> None:
    replacer = StreamReplacer(())
    assert replacer.push("<NL>") == "<NL>"
    assert replacer.flush() == ""


def test_context_token_ids_decode_the_first_token_in_context() -> None:
    prompt = TOK.encode("system: be brief\nuser: こんにちは 世界\nbot:")
    reply = TOK.encode(" reply 🙂")
    counter = CountingDetokenizer(TOK)
    run = stream([reply[:1], reply[1:]], detokenizer=counter, context=prompt)
    assert run.text == " reply 🙂"
    first = counter.calls[0]
    # The prompt's last few ids (not the whole prompt), decoded as context.
    assert 0 < len(first) <= 8 < len(prompt)
    assert list(first) == prompt[-len(first) :]
    assert list(counter.calls[1]) == [*first, reply[0]]


class SentencePieceLike:
    """Drops the leading space of a decode, as SentencePiece does ("▁" marks a space)."""

    PIECES = ("▁hello", "▁world", "!", "<s>")

    def decode(self, token_ids: Sequence[int], /) -> str:
        text = "".join(self.PIECES[t] for t in token_ids if t != 3).replace("▁", " ")
        return text.removeprefix(" ")


def test_context_keeps_the_space_a_leading_decode_would_drop() -> None:
    spm = SentencePieceLike()
    assert stream([[1], [2]], detokenizer=spm).text == "world!"
    assert stream([[1], [2]], detokenizer=spm, context=[3, 0]).text == " world!"
    assert stream([[0], [1], [2]], detokenizer=spm).text == "hello world!"


@pytest.mark.parametrize("silent", [1, 31, 32, 100])
def test_a_run_of_silent_tokens_keeps_the_space(silent: int) -> None:
    """Regression: after 32 silent tokens the window used to restart at them, so the next
    decode started fresh and SentencePiece dropped the space ("helloworld")."""
    spm = SentencePieceLike()
    ids = [0, *[3] * silent, 1, 2]
    for chunks in ([[t] for t in ids], [ids], [ids[:-2], ids[-2:]]):
        assert stream(chunks, detokenizer=spm).text == "hello world!"


class Normalising:
    """Decodes to NFC, so a combining accent changes the text already decoded."""

    PIECES = ("e", "\u0301", "x")

    def decode(self, token_ids: Sequence[int], /) -> str:
        return unicodedata.normalize("NFC", "".join(self.PIECES[t] for t in token_ids))


def test_decode_that_rewrites_earlier_text_loses_nothing() -> None:
    run = stream([[0], [1], [2]], detokenizer=Normalising())
    # "e" was already sent when the accent arrived; the window falls back to sending the
    # whole re-decoded window rather than dropping the accented character.
    assert run.deltas[0] == "e"
    assert run.text.endswith("\u00e9x")


def test_japanese_and_emoji_one_token_at_a_time_never_emit_fffd() -> None:
    text = "こんにちは世界🙂🎉 日本語テスト👍🏽 猫"
    ids = TOK.encode(text)
    assert any(FFFD in TOK.decode([t]) for t in ids)  # BPE splits characters
    run = stream([[t] for t in ids], expected=text)
    assert run.text == text
    assert not any(FFFD in d for d in run.deltas)
    assert run.stopped is None


def test_a_character_cut_at_the_very_end_is_dropped_at_finish() -> None:
    ids = [*TOK.encode("ok "), *TOK.encode("🎉")[:2]]
    decoder = IncrementalDecoder(TOK)
    deltas = [decoder.push([t]) for t in ids]
    assert "".join(deltas) == "ok "
    assert decoder.finish() == ""  # its bytes never completed: nothing to show
    assert decoder.stopped is None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_reply_cut_anywhere_never_ends_in_fffd(data: st.DataObject) -> None:
    # Valid text cut after any token (the length limit): every byte of a whole character
    # is shown, none of the cut one, and no U+FFFD anywhere.
    text = data.draw(texts, label="text")
    ids = TOK.encode(text)
    cut = data.draw(st.integers(0, len(ids)), label="cut")
    run = stream(split(data, ids[:cut]))
    shown = run.text.encode()
    whole = TOK.decode(ids[:cut]).rstrip(FFFD).encode()
    assert FFFD not in run.text
    assert shown == whole and text.encode().startswith(shown)


def test_push_accepts_any_iterable_and_empty_pushes() -> None:
    decoder = IncrementalDecoder(TOK)
    assert decoder.push([]) == ""
    assert decoder.push(iter(TOK.encode("hello"))) == "hello"
    assert decoder.push(()) == ""
    assert decoder.finish() == ""
