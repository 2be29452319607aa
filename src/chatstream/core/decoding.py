"""Incremental detokenization: token ids in, text deltas out.

Three stages, each holding back only what it must:

1. :class:`_TokenWindow` turns token ids into text. It decodes a small window of recent
   ids (the vLLM/TGI "prefix offset" technique), so each step costs O(new tokens) rather
   than re-decoding the whole reply, and it holds back a tail that decodes to U+FFFD: a
   multi-byte character (Japanese, emoji) split across tokens is emitted once complete.
2. :class:`StopStringMatcher` cuts the text at the first stop string and holds back any
   tail that could still grow into one, so no part of a stop string is ever emitted.
3. :class:`StreamReplacer` applies output replacements (the original's ``<NL>`` to newline)
   across chunk boundaries, holding back a tail that could still grow into a match.

:class:`IncrementalDecoder` chains them. Its output does not depend on how the tokens are
chunked: feeding them one at a time or all at once gives the same text.
"""

from __future__ import annotations

import enum
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
        self._prefix, self._read = self._read, len(self._ids)
        return delta


def _longest_pending_prefix(text: str, candidates: tuple[str, ...], limit: int) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a candidate."""
    for size in range(min(len(text), limit), 0, -1):
        tail = text[-size:]
        if any(c.startswith(tail) and len(c) > size for c in candidates):
            return size
    return 0


class StopStringMatcher:
    """Cuts a text stream at the first stop string; never emits any part of one."""

    __slots__ = ("_limit", "_pending", "_stops", "stopped")

    def __init__(self, stop_strings: tuple[str, ...]) -> None:
        self._stops = stop_strings
        self._limit = max((len(s) for s in stop_strings), default=1) - 1
        self._pending = ""
        #: True once a stop string was seen; everything after it is discarded.
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        pending = self._pending + text
        cut = self._first_hit(pending)
        # The earliest position from which the tail could still grow into a stop string.
        hold_from = len(pending) - _longest_pending_prefix(pending, self._stops, self._limit)
        if cut is not None and cut <= hold_from:
            self.stopped = True
            self._pending = ""
            return pending[:cut]
        # Either no stop string yet, or one was found but a longer one that starts earlier
        # could still complete (stops "<bot>" and "bo" on "<bo"): the cut is not known yet.
        self._pending = pending[hold_from:]
        return pending[:hold_from]

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        cut = self._first_hit(pending)
        if cut is not None:
            self.stopped = True
            return pending[:cut]
        return pending

    def _first_hit(self, text: str) -> int | None:
        """Where the earliest stop string occurrence in ``text`` starts, if any."""
        return min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=None)


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
