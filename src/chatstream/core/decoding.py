"""Incremental detokenization: token ids in, text deltas out.

Three stages, each holding back only what it must:

1. :class:`_TokenWindow` turns token ids into text. It decodes a small window of recent
   ids (the vLLM/TGI "prefix offset" technique), so each step costs O(new tokens) rather
   than re-decoding the whole reply, and it holds back a tail that decodes to U+FFFD: a
   multi-byte character (Japanese, emoji) split across tokens is emitted once complete. A
   tail still incomplete when the reply ends (cut by the length limit, a stop token, a
   cancel) is dropped: a reply never ends in U+FFFD.
2. :class:`StopStringMatcher` cuts the text at the first stop string and holds back any
   tail that could still grow into one, so no part of a stop string is ever emitted.
3. :class:`StreamReplacer` applies output replacements (the original's ``<NL>`` to newline)
   across chunk boundaries, holding back a tail that could still grow into a match.

:class:`IncrementalDecoder` chains them. Its output does not depend on how the tokens are
chunked: feeding them one at a time or all at once gives the same text.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from .errors import ConfigError

__all__ = [
    "DecoderStop",
    "DecodingOptions",
    "Detokenizer",
    "IncrementalDecoder",
    "StopStringMatcher",
    "StreamReplacer",
    "apply_replacements",
]

_REPLACEMENT_CHAR: Final = "\ufffd"
#: Prompt tokens decoded before the first new token, so that tokenizers which drop a
#: leading space at the start of a decode (SentencePiece) still space the reply right.
_CONTEXT_TOKENS: Final = 4
#: If this many tokens decode to no new text, they are dropped from the window; this bounds
#: the per-step work when a model emits a long run of tokens that decode to nothing.
_MAX_SILENT_WINDOW: Final = 32


class Detokenizer(Protocol):
    """What the core needs of a tokenizer: ids to text (special tokens skipped)."""

    def decode(self, token_ids: Sequence[int], /) -> str: ...


class DecoderStop(enum.Enum):
    """Why an :class:`IncrementalDecoder` stopped."""

    STOP_TOKEN = "stop_token"
    STOP_STRING = "stop_string"


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodingOptions:
    """How raw model text becomes the reply."""

    #: The reply ends before the first occurrence of any of these (matched on raw text).
    stop_strings: tuple[str, ...] = ()
    #: The reply ends at any of these tokens; the token itself is not part of the text.
    stop_token_ids: frozenset[int] = frozenset()
    #: (old, new) pairs applied left to right in one pass; at a position where several
    #: could match, the first pair in this order wins.
    replacements: tuple[tuple[str, str], ...] = ()
    #: Drop whitespace at the start of the reply.
    strip_leading_whitespace: bool = False

    def __post_init__(self) -> None:
        # A bare string is iterable too: without this check "</s>" would silently become
        # the four stop strings "<", "/", "s", ">".
        if isinstance(self.stop_strings, str):
            raise ConfigError(
                "stop_strings", f"must be a sequence of strings, got {self.stop_strings!r}"
            )
        stops = tuple(self.stop_strings)
        if not all(isinstance(s, str) and s for s in stops):
            raise ConfigError("stop_strings", f"must be non-empty strings, got {stops!r}")
        if isinstance(self.replacements, str):
            raise ConfigError(
                "replacements", f"must be a sequence of (old, new) pairs, got {self.replacements!r}"
            )
        pairs = tuple(self.replacements)
        for pair in pairs:
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ConfigError("replacements", f"need (old, new) pairs, got {pair!r}")
            old, new = pair
            if not (isinstance(old, str) and old and isinstance(new, str)):
                raise ConfigError(
                    "replacements", f"need a non-empty string to replace, got {(old, new)!r}"
                )
        pairs = tuple((old, new) for old, new in pairs)
        object.__setattr__(self, "stop_strings", stops)
        object.__setattr__(self, "replacements", pairs)
        object.__setattr__(self, "stop_token_ids", frozenset(self.stop_token_ids))


class _TokenWindow:
    """Token ids to text, holding back an incomplete UTF-8 tail."""

    __slots__ = ("_detokenizer", "_ids", "_prefix", "_read")

    def __init__(self, detokenizer: Detokenizer, context: Sequence[int]) -> None:
        self._detokenizer = detokenizer
        self._ids: list[int] = list(context[-_CONTEXT_TOKENS:]) if context else []
        # ids[_prefix:_read] was already emitted and is decoded again only as context;
        # ids[_read:] is new.
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_ids: Iterable[int]) -> str:
        self._ids.extend(token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        decode = self._detokenizer.decode
        before = decode(self._ids[self._prefix : self._read])
        after = decode(self._ids[self._prefix :])
        incomplete = after.endswith(_REPLACEMENT_CHAR)
        if not final:
            if incomplete:
                return ""
            if len(after) <= len(before):
                if len(self._ids) - self._prefix >= _MAX_SILENT_WINDOW:
                    # Drop the silent run rather than make it the next context: a decode
                    # that starts at it would lose what a fresh start drops (the leading
                    # space of a SentencePiece reply).
                    del self._ids[self._read :]
                return ""
        delta = after[len(before) :] if after.startswith(before) else after
        if incomplete:
            # The end of the reply, inside a character whose bytes never came (or after
            # bytes that are no character): those bytes are dropped, not shown as U+FFFD.
            delta = delta.rstrip(_REPLACEMENT_CHAR)
        self._prefix, self._read = self._read, len(self._ids)
        return delta


@dataclass(frozen=True, slots=True)
class _StopAutomaton:
    """An Aho-Corasick automaton over the stop strings: a trie whose states are the
    prefixes of stop strings, with failure links to the longest proper suffix that is also
    such a prefix.

    Written here rather than taken from ``pyahocorasick``: the core imports only the
    standard library, and it needs what that library does not expose per character: the
    depth of the current state (how much of the text could still grow into a stop string,
    which is what must be held back) alongside each match.
    """

    #: ``goto[state][char]``: the trie's edges.
    goto: tuple[dict[str, int], ...]
    #: ``fail[state]``: the state of the longest proper suffix that is a trie prefix.
    fail: tuple[int, ...]
    #: ``depth[state]``: the length of the prefix the state stands for.
    depth: tuple[int, ...]
    #: ``match[state]``: the length of the longest stop string ending at this state
    #: (itself or through its failure links), 0 for none.
    match: tuple[int, ...]

    @classmethod
    def build(cls, stop_strings: Iterable[str]) -> _StopAutomaton:
        goto: list[dict[str, int]] = [{}]
        depth = [0]
        match = [0]
        for string in stop_strings:
            state = 0
            for char in string:
                child = goto[state].get(char)
                if child is None:
                    child = goto[state][char] = len(goto)
                    goto.append({})
                    depth.append(depth[state] + 1)
                    match.append(0)
                state = child
            match[state] = len(string)
        fail = [0] * len(goto)
        # Breadth first, so that a state's failure link is complete before its children's
        # (the root's children fail to the root).
        queue = list(goto[0].values())
        for state in queue:
            for char, child in goto[state].items():
                link = fail[state]
                while link and char not in goto[link]:
                    link = fail[link]
                fail[child] = goto[link].get(char, 0)
                # The longest stop string ending here is this state's own, else its link's.
                match[child] = match[child] or match[fail[child]]
                queue.append(child)
        return cls(tuple(goto), tuple(fail), tuple(depth), tuple(match))

    def step(self, state: int, char: str) -> int:
        goto, fail = self.goto, self.fail
        while state and char not in goto[state]:
            state = fail[state]
        return goto[state].get(char, 0)


class StopStringMatcher:
    """Cuts a text stream at the first stop string; never emits any part of one.

    "First" is the earliest start: with stops ``"<bot>"`` and ``"bo"``, ``"x<bot>"`` is cut
    before ``<``. Each character costs amortized constant time whatever the number and
    length of the stop strings (an Aho-Corasick automaton), and only the tail that could
    still grow into a stop string is held back (at most the longest one, less a character).
    """

    __slots__ = ("_automaton", "_cut", "_pending", "_state", "stopped")

    def __init__(self, stop_strings: tuple[str, ...]) -> None:
        # An empty stop string would end every reply before it began: it is no stop.
        self._automaton = _automaton_of(tuple(s for s in stop_strings if s))
        self._state = 0
        #: Text received but not emitted yet: it may still be part of a stop string.
        self._pending = ""
        #: Where in the pending text the earliest complete stop string starts, if one did.
        self._cut: int | None = None
        #: True once a stop string was seen; everything after it is discarded.
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        automaton = self._automaton
        if len(automaton.goto) == 1:  # no stop strings: nothing to hold back
            return text
        pending = self._pending + text
        state, cut = self._state, self._cut
        position = len(self._pending)
        for char in text:
            state = automaton.step(state, char)
            position += 1
            found = automaton.match[state]
            if found and (cut is None or position - found < cut):
                cut = position - found
            if cut is not None and cut <= position - automaton.depth[state]:
                # No stop string still in progress starts before the cut: it is final.
                self.stopped = True
                self._pending, self._cut = "", None
                return pending[:cut]
        # Hold back from where the longest stop string still in progress starts (a found
        # one included: "<bo" with stops "<bot>" and "bo" waits to see which wins).
        hold_from = len(pending) - automaton.depth[state]
        self._state = state
        self._pending = pending[hold_from:]
        self._cut = None if cut is None else cut - hold_from
        return pending[:hold_from]

    def flush(self) -> str:
        pending, cut = self._pending, self._cut
        self._pending, self._cut, self._state = "", None, 0
        if cut is not None:
            self.stopped = True
            return pending[:cut]
        return pending


@functools.lru_cache(maxsize=64)
def _automaton_of(stop_strings: tuple[str, ...]) -> _StopAutomaton:
    # Most requests share the prompt's stop strings: build their automaton once.
    return _StopAutomaton.build(stop_strings)


class StreamReplacer:
    """Applies (old, new) replacements to a text stream, across chunk boundaries."""

    __slots__ = ("_pairs", "_pending")

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._pairs = pairs
        self._pending = ""

    def push(self, text: str) -> str:
        if not self._pairs:
            return text
        return self._scan(self._pending + text, final=False)

    def flush(self) -> str:
        return self._scan(self._pending, final=True)

    def _scan(self, text: str, *, final: bool) -> str:
        out: list[str] = []
        i = 0
        while i < len(text):
            rest = text[i : i + max(len(old) for old, _ in self._pairs)]
            for old, new in self._pairs:
                if rest.startswith(old):
                    out.append(new)
                    i += len(old)
                    break
                if not final and old.startswith(text[i:]):
                    # An earlier pair could still match once more text arrives: wait.
                    self._pending = text[i:]
                    return "".join(out)
            else:
                out.append(text[i])
                i += 1
        self._pending = ""
        return "".join(out)


def apply_replacements(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """The whole-text form of :class:`StreamReplacer` (same semantics, one call)."""
    replacer = StreamReplacer(pairs)
    return replacer.push(text) + replacer.flush()


@dataclass(slots=True)
class IncrementalDecoder:
    """Token ids in, reply text deltas out.

    Call :meth:`push` with each step's new token ids and :meth:`finish` once when the
    generation ends for any other reason than a stop (length, cancel, error). After a stop
    token or stop string (:attr:`stopped` is set) everything else is ignored.
    """

    detokenizer: Detokenizer
    options: DecodingOptions = field(default_factory=DecodingOptions)
    #: The last prompt ids, decoded only as context for the first new token.
    context_token_ids: Sequence[int] = ()
    #: Why the decoder stopped, or None while it still accepts tokens.
    stopped: DecoderStop | None = field(default=None, init=False)
    _window: _TokenWindow = field(init=False, repr=False)
    _stops: StopStringMatcher = field(init=False, repr=False)
    _replacer: StreamReplacer = field(init=False, repr=False)
    _at_start: bool = field(default=True, init=False, repr=False)

    def __post_init__(self) -> None:
        self._window = _TokenWindow(self.detokenizer, self.context_token_ids)
        self._stops = StopStringMatcher(self.options.stop_strings)
        self._replacer = StreamReplacer(self.options.replacements)

    def push(self, token_ids: Iterable[int]) -> str:
        """Feed new token ids; return the text that is now certain."""
        if self.stopped is not None:
            return ""
        ids: list[int] = []
        stop_token = False
        for token in token_ids:
            if token in self.options.stop_token_ids:
                stop_token = True
                break
            ids.append(token)
        raw = self._window.push(ids)
        text = self._end(raw + self._window.flush()) if stop_token else self._stops.push(raw)
        if self._stops.stopped:
            self.stopped = DecoderStop.STOP_STRING
        elif stop_token:
            self.stopped = DecoderStop.STOP_TOKEN
        return self._replace(text, final=self.stopped is not None)

    def finish(self) -> str:
        """End of generation: release everything held back."""
        if self.stopped is not None:
            return ""
        text = self._end(self._window.flush())
        if self._stops.stopped:
            self.stopped = DecoderStop.STOP_STRING
        return self._replace(text, final=True)

    def _end(self, raw: str) -> str:
        """The last raw text through the stop matcher, then whatever it still holds."""
        text = self._stops.push(raw)
        return text + self._stops.flush()

    def _replace(self, text: str, *, final: bool) -> str:
        if self._at_start and self.options.strip_leading_whitespace:
            text = text.lstrip()
        if text:
            self._at_start = False
        out = self._replacer.push(text)
        return out + self._replacer.flush() if final else out
