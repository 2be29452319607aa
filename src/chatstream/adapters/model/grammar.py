"""Grammar-constrained decoding: OpenAI ``response_format`` (``json_object``, ``json_schema``
with ``strict``), regular expressions and context-free grammars.

A :class:`Grammars` is built once per model from its HuggingFace tokenizer. It compiles a
constraint into a :class:`CompiledGrammar` (cached), each request gets its own
:class:`GrammarMatcher` from it, and at every decode step the sampler asks the
:class:`Grammars` for the masks of the constrained rows (:meth:`Grammars.fill_masks`) and
applies them to the logits in place (:meth:`Grammars.apply_masks`): a token the grammar does
not allow next gets ``-inf``. Once a matcher has matched the whole grammar only the stop
tokens stay allowed, so the reply ends.

The parsing is done by llguidance (Rust, an Earley parser over a lexer on the token trie):
its wheel has no dependencies at all (xgrammar pulls triton, about 290 MB, even on a CPU
machine), it builds a matcher in under a millisecond, computes a JSON-schema mask in about
20 µs on SmolLM2's 49152 tokens, and reports an unsupported schema keyword by name, which
is what a client needs in a 400 answer.

Written here, by hand, and why:

* the choice of JSON layout: fixed separators ``", "`` and ``": "`` and no other
  whitespace. With flexible whitespace the grammar allows a newline after every comma, and
  small or random models take it forever; fixed separators keep every reply bounded by its
  content;
* OpenAI ``strict``: JSON Schema lets an object without ``additionalProperties`` carry any
  other key, OpenAI's strict mode does not. :func:`~chatstream.core.json_schema.close_objects` adds
  ``"additionalProperties": false`` to every object schema that lists its ``properties``;
* applying a packed bitmask to float logits: llguidance's own helper is a
  ``torch.compile`` kernel (a C++ toolchain at run time on a CPU). Here a 256-entry table
  turns each mask byte into eight additive entries (``0`` or ``-inf``) with one
  ``index_select``, the same code on CPU and CUDA.

The schema of a tool call is the HTTP layer's (:mod:`chatstream.adapters.http.openai_tools`):
here it is one more JSON schema.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import llguidance
import llguidance.hf
import torch

from chatstream.core.json_schema import close_objects

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = [
    "GRAMMAR_KINDS",
    "CompiledGrammar",
    "GrammarError",
    "GrammarKind",
    "GrammarMatcher",
    "Grammars",
    "MaskBatch",
]

GrammarKind = Literal["json_object", "json_schema", "regex", "grammar", "ebnf"]
#: ``grammar`` and ``ebnf`` are one kind: a Lark grammar or a GBNF one (llama.cpp's EBNF).
GRAMMAR_KINDS: Final[tuple[GrammarKind, ...]] = (
    "json_object",
    "json_schema",
    "regex",
    "grammar",
    "ebnf",
)

# The JSON layout of every JSON grammar, overriding any "x-guidance" a client puts in its
# schema: the server, not the client, decides what the parser may spend steps on.
_JSON_LAYOUT: Final[JsonCompileOptions] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    # An unsupported keyword is an error, never silently ignored.
    "lenient": False,
}

# Short error messages (no parser state and grammar dump), fit for a client.
_LIMITS: Final = llguidance.LLParserLimits(verbose_errors=False)

# The bitmask is read as bytes: bit j of int32 word w is token 32 * w + j only where the
# low byte comes first.
if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for
    raise ImportError("chatstream.adapters.model.grammar needs a little-endian machine")


class GrammarError(ValueError):
    """A constraint that cannot be compiled: invalid JSON, an unsupported schema keyword,
    a bad regular expression or grammar. The message is meant for the client."""


class GrammarMatcher:
    """The state of one request's constraint: feed it every generated token.

    Not thread-safe: one request's matcher is used by one thread at a time (the model
    thread that samples its row).
    """

    __slots__ = ("_matcher", "grammar")

    def __init__(self, matcher: llguidance.LLMatcher, grammar: CompiledGrammar) -> None:
        self._matcher = matcher
        #: What this matcher follows.
        self.grammar = grammar

    def accept(self, token_id: int) -> bool:
        """Advance by one generated token. False if the grammar does not allow it: the
        matcher is then in error (:attr:`error`) and allows only the stop tokens.

        A stop token is accepted where the grammar is complete (:attr:`can_stop`)."""
        return bool(self._matcher.consume_token(token_id))

    @property
    def is_terminated(self) -> bool:
        """True once nothing but a stop token may follow: the grammar is fully matched (or
        the matcher is in error, see :attr:`error`)."""
        return bool(self._matcher.is_stopped())

    @property
    def can_stop(self) -> bool:
        """True where the text so far is a complete match (a stop token is allowed next),
        even if the grammar would also allow more (``[0-9]+`` after ``12``)."""
        return bool(self._matcher.is_accepting())

    @property
    def error(self) -> str | None:
        """Why the matcher failed (a rejected token, a parser limit), or None."""
        return self._matcher.get_error() or None

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into ``bitmask[row]``: an int32 CPU tensor of
        :attr:`Grammars.bitmask_width` words per row, bit ``t % 32`` of word ``t // 32``
        set when token ``t`` is allowed. :meth:`Grammars.fill_masks` does this for a batch."""
        words = bitmask[row]
        _check_bitmask(words, self.grammar.bitmask_width)
        self._matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class CompiledGrammar:
    """A validated constraint; :meth:`matcher` starts a request on it. Thread-safe."""

    kind: GrammarKind
    #: The llguidance grammar (JSON text), for logs and debugging.
    definition: str
    #: Words per row of the bitmask (see :meth:`GrammarMatcher.fill_bitmask`).
    bitmask_width: int
    _initial: llguidance.LLMatcher = dataclasses.field(repr=False)

    def matcher(self) -> GrammarMatcher:
        """A fresh matcher at the start of the grammar (a copy of a compiled one: a few
        microseconds)."""
        return GrammarMatcher(self._initial.deep_copy(), self)


@dataclasses.dataclass(frozen=True, slots=True)
class MaskBatch:
    """The masks of one step's constrained rows, from :meth:`Grammars.fill_masks`."""

    #: ``[len(rows), width]`` int32 on the CPU: a view of the filling thread's buffer,
    #: valid until that thread's next :meth:`Grammars.fill_masks`.
    bitmask: torch.Tensor
    #: The logits rows the bitmask rows belong to, in order.
    rows: tuple[int, ...]
    #: Rows of the whole batch (constrained or not).
    batch_size: int


class _Scratch(threading.local):
    """Per-thread buffers, so that model threads sharing one :class:`Grammars` never share
    one. Reused across steps: a fresh megabyte-sized CPU tensor at every step costs more
    (page faults) than the work done in it."""

    def __init__(self) -> None:
        self.bitmask: torch.Tensor | None = None
        # Additive tables (mask byte -> 8 entries of 0 or -inf), by device and dtype.
        self.tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.buffers: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        # Set after an asynchronous copy of the bitmask to a GPU: the next fill must not
        # overwrite the pinned buffer before that copy has read it.
        self.copied: torch.Event | None = None

    def buffer(
        self, name: str, numel: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A 1-D tensor of ``numel`` elements, grown as needed, its content undefined."""
        key = (name, device, dtype)
        held = self.buffers.get(key)
        if held is None or held.numel() < numel:
            held = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[key] = held
        return held[:numel]

    def table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        table = self.tables.get((device, dtype))
        if table is None:
            table = self.tables[(device, dtype)] = _byte_table(device, dtype)
        return table


class Grammars:
    """Compiles constraints for one model and masks its logits.

    Args:
        tokenizer: the model's HuggingFace tokenizer (a fast one).
        vocab_size: columns of the model's logits (``model.config.vocab_size``). Columns
            with no token of the tokenizer (padding rows of the embedding) are never
            allowed in a constrained row.
        stop_token_ids: the tokens that end a reply (the backend's ``stop_token_ids``);
            the only ones allowed once a matcher is terminated. Default: the tokenizer's
            EOS token.
        cache_size: compiled grammars kept (least recently used first out).
        mask_threads: threads llguidance uses to fill a batch of masks.

    :meth:`compile` is thread-safe and may be called from any thread. :meth:`fill_masks`
    and :meth:`apply_masks` keep their buffers per thread: several model threads may share
    one :class:`Grammars`.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        *,
        stop_token_ids: Iterable[int] | None = None,
        cache_size: int = 64,
        mask_threads: int = 1,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        stops = (tokenizer.eos_token_id,) if stop_token_ids is None else tuple(stop_token_ids)
        if not stops or any(not isinstance(t, int) for t in stops):
            raise ValueError(f"stop_token_ids must be token ids, got {stops!r}")
        self.vocab_size = int(vocab_size)
        self.stop_token_ids: tuple[int, ...] = tuple(sorted(set(stops)))
        # llguidance needs room for every token of the tokenizer; the logits may have more
        # columns (padding) or, rarely, fewer (tokens the model never produces).
        n_vocab = max(self.vocab_size, len(tokenizer))
        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=n_vocab, eos_token=list(self.stop_token_ids)
        )
        self.bitmask_width = (n_vocab + 31) // 32
        self._executor = llguidance.LLExecutor(num_threads=mask_threads)
        self._cache: collections.OrderedDict[tuple[str, bool, str], CompiledGrammar] = (
            collections.OrderedDict()
        )
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._scratch = _Scratch()

    # ------------------------------------------------------------------ compile

    def compile(self, kind: str, source: str = "", *, strict: bool = False) -> CompiledGrammar:
        """Compile a constraint, or return it from the cache.

        Args:
            kind: ``json_object`` (any JSON object; ``source`` is ignored),
                ``json_schema`` (``source`` is the JSON text of the schema), ``regex``,
                ``grammar`` or ``ebnf`` (a Lark or GBNF grammar).
            source: the schema, expression or grammar.
            strict: for ``json_schema``, OpenAI's strict mode: objects that list their
                properties allow no others (see :func:`~chatstream.core.json_schema.close_objects`).

        Raises:
            GrammarError: the constraint is invalid or uses something unsupported.
        """
        checked = _grammar_kind(kind)
        # Only a schema has a strict mode; any JSON object ignores its source.
        strict = strict and checked == "json_schema"
        key = (checked, strict, "" if checked == "json_object" else source)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        # Outside the lock: a large schema takes milliseconds, and the model thread's cache
        # hits must not wait for it. Two threads may compile one key at once; one wins.
        compiled = self._build(checked, source, strict=strict)
        with self._lock:
            compiled = self._cache.setdefault(key, compiled)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _build(self, kind: GrammarKind, source: str, *, strict: bool) -> CompiledGrammar:
        definition = _definition(kind, source, strict=strict)
        # The constructor never raises on a bad grammar: it records the error.
        initial = llguidance.LLMatcher(self._tokenizer, definition, log_level=0, limits=_LIMITS)
        if initial.is_error():
            raise GrammarError(f"invalid {kind}: {initial.get_error().strip()}")
        return CompiledGrammar(kind, definition, self.bitmask_width, initial)

    # ------------------------------------------------------------------ masks

    def fill_masks(self, matchers: Sequence[GrammarMatcher | None]) -> MaskBatch | None:
        """Compute the allowed tokens of every row that has a matcher (None: a row without
        constraint). None when no row is constrained.

        Runs on the CPU and reads no logits: it may run while the forward pass is in
        flight on a GPU. The bitmask lives in this thread's buffer, allocated once and
        grown with the batch.
        """
        constrained = [(row, m) for row, m in enumerate(matchers) if m is not None]
        if not constrained:
            return None
        if len({id(m) for _, m in constrained}) < len(constrained):
            raise ValueError("one matcher in two rows: each row needs its own")
        bitmask = self._bitmask(len(constrained))
        targets = [(matcher._matcher, index) for index, (_, matcher) in enumerate(constrained)]
        self._executor.unsafe_compute_mask_ptr(
            targets, bitmask.data_ptr(), self.bitmask_width * 4, len(constrained)
        )
        return MaskBatch(bitmask, tuple(row for row, _ in constrained), len(matchers))

    def apply_masks(self, logits: torch.Tensor, masks: MaskBatch | None) -> None:
        """Set to ``-inf``, in place, the logits of tokens the grammar forbids, in the
        constrained rows only (the other rows are not touched).

        Args:
            logits: ``[B, vocab_size]`` float logits, on the CPU or a GPU.
            masks: this step's :meth:`fill_masks` for the same B rows.
        """
        if masks is None:
            return
        if logits.dim() != 2 or logits.shape[0] != masks.batch_size:
            raise ValueError(
                f"logits must be [{masks.batch_size}, {self.vocab_size}], got {list(logits.shape)}"
            )
        if logits.shape[1] != self.vocab_size:
            raise ValueError(f"logits have {logits.shape[1]} columns, not {self.vocab_size}")
        additive = self._additive(masks.bitmask, logits)
        if len(masks.rows) == masks.batch_size:
            logits.add_(additive)
        else:
            rows = torch.tensor(masks.rows, dtype=torch.int64).to(logits.device)
            logits.index_add_(0, rows, additive)

    def mask_logits(self, logits: torch.Tensor, matchers: Sequence[GrammarMatcher | None]) -> None:
        """:meth:`fill_masks` then :meth:`apply_masks`."""
        self.apply_masks(logits, self.fill_masks(matchers))

    def _bitmask(self, rows: int) -> torch.Tensor:
        scratch = self._scratch
        if scratch.copied is not None:
            scratch.copied.synchronize()
            scratch.copied = None
        buffer = scratch.bitmask
        if buffer is None or buffer.shape[0] < rows:
            # Pinned where a GPU may read it: its copy is then asynchronous.
            buffer = torch.empty(
                (max(rows, 8), self.bitmask_width),
                dtype=torch.int32,
                pin_memory=torch.cuda.is_available(),
            )
            scratch.bitmask = buffer
        return buffer[:rows]

    def _additive(self, bitmask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``[rows, vocab_size]`` of 0 (allowed) and -inf (forbidden), on the logits'
        device and dtype, in this thread's buffers."""
        scratch = self._scratch
        device, words = logits.device, bitmask.numel()
        packed = bitmask
        if device.type != "cpu":
            packed = scratch.buffer("packed", words, torch.int32, device).view(bitmask.shape)
            packed.copy_(bitmask, non_blocking=True)
            if device.type == "cuda":
                scratch.copied = torch.Event(device=device)
                scratch.copied.record()
        # One table row per mask byte: byte k of the row holds tokens 8k to 8k + 7.
        indices = scratch.buffer("indices", words * 4, torch.int32, device)
        indices.copy_(packed.view(torch.uint8).reshape(-1))
        expanded = scratch.buffer("expanded", words * 32, logits.dtype, device)
        torch.index_select(
            scratch.table(device, logits.dtype), 0, indices, out=expanded.view(words * 4, 8)
        )
        return expanded.view(bitmask.shape[0], -1)[:, : logits.shape[1]]


def _grammar_kind(kind: str) -> GrammarKind:
    for known in GRAMMAR_KINDS:
        if kind == known:
            return known
    raise GrammarError(
        f"unknown constraint kind {kind!r}; expected one of {', '.join(GRAMMAR_KINDS)}"
    )


def _check_bitmask(words: torch.Tensor, width: int) -> None:
    # llguidance writes through a raw pointer: check everything it cannot.
    if words.dtype != torch.int32 or words.device.type != "cpu" or not words.is_contiguous():
        raise ValueError("the bitmask must be a contiguous int32 CPU tensor")
    if words.dim() != 1 or words.numel() != width:
        raise ValueError(f"a bitmask row must have {width} int32 words, got {words.numel()}")


def _byte_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Row b: the eight additive entries of mask byte b, bit 0 first."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return torch.where(bits == 1, 0.0, float("-inf")).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------- definitions


def _definition(kind: GrammarKind, source: str, *, strict: bool) -> str:
    """The llguidance grammar of a constraint (not validated yet)."""
    if kind == "json_object":
        return _json_grammar({"type": "object"})
    if kind == "json_schema":
        schema = _parse_schema(source)
        return _json_grammar(close_objects(schema) if strict else schema)
    if kind == "regex":
        return str(llguidance.LLMatcher.grammar_from_regex(source))
    try:
        # Lark as it is; GBNF (``root ::= ...``) converted to Lark.
        return llguidance.grammar_from("grammar", source)
    except ValueError as error:
        raise GrammarError(f"invalid {kind}: {error}") from None


def _parse_schema(source: str) -> dict[str, Any]:
    try:
        schema = json.loads(source)
    except json.JSONDecodeError as error:
        raise GrammarError(f"the JSON schema is not valid JSON: {error}") from None
    if not isinstance(schema, dict):
        raise GrammarError("the JSON schema must be a JSON object")
    return schema


def _json_grammar(schema: dict[str, Any]) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_LAYOUT)
