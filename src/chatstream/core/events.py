"""Inputs and outputs of the engine.

Everything that goes into :class:`chatstream.core.engine.Engine` (through ``send``) and
everything that comes out (through ``next_event``) is one of these frozen, slotted,
keyword-only dataclasses. Inputs are named in the imperative (``Submit``, ``Cancel``),
outputs in the past tense (``Queued``, ``Admitted``, ``Finished``), except
:class:`StepPlan`, the engine's instruction to the model.

Per request, the outputs always follow this grammar::

    Rejected
  | [Queued QueuePositionChanged*] Admitted TextDelta* Finished
  | Queued QueuePositionChanged* Finished(reason=cancelled | error)

Exactly one terminal event (:class:`Rejected` or :class:`Finished`) per submitted request,
and nothing for that request after it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .config import GenerationParams
from .decoding import DecodingOptions

__all__ = [
    "NEED_INPUT",
    "Admitted",
    "Cancel",
    "DecodeItem",
    "Drain",
    "DropKV",
    "Event",
    "FinishReason",
    "Finished",
    "Input",
    "KVTransfer",
    "ModelLost",
    "Output",
    "PrefillChunk",
    "QueuePositionChanged",
    "Queued",
    "RejectReason",
    "Rejected",
    "Release",
    "RequestId",
    "RestoreKV",
    "SaveKV",
    "Sentinel",
    "StepCompleted",
    "StepFailed",
    "StepPlan",
    "Submit",
    "TextDelta",
    "Usage",
]

RequestId: TypeAlias = int


class Sentinel(enum.Enum):
    """Special values returned by ``Engine.next_event``."""

    #: Nothing to report until the engine is sent another input.
    NEED_INPUT = "NEED_INPUT"


NEED_INPUT = Sentinel.NEED_INPUT


class FinishReason(enum.StrEnum):
    """Why a generation ended."""

    #: A stop token or a stop string was produced.
    STOP = "stop"
    #: ``max_new_tokens`` or the context length was reached.
    LENGTH = "length"
    #: The request was cancelled (client gone, shutdown, explicit cancel).
    CANCELLED = "cancelled"
    #: The model failed for this request.
    ERROR = "error"


class RejectReason(enum.StrEnum):
    """Why a request was refused before it ever ran."""

    #: Every slot is busy and the waiting room is full.
    QUEUE_FULL = "queue_full"
    #: The engine is draining for shutdown and admits nothing new.
    DRAINING = "draining"
    #: The prompt leaves no room for a single new token in the context.
    PROMPT_TOO_LONG = "prompt_too_long"
    #: The model is gone; nothing can be generated.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of every input and output."""


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class Submit(Event):
    """Ask for a reply to a prompt that is already tokenized."""

    request_id: RequestId
    prompt_token_ids: tuple[int, ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    #: Opaque data passed to the backend with each prefill chunk (the mock backend reads
    #: the user's input and the turn number from it).
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(Event):
    """Stop a request, waiting or running. Unknown or finished ids are ignored.

    With ``error``, the request ends as ``Finished(reason=error, error=error)`` instead of
    ``cancelled``: the server cutting work short (a shutdown deadline) must tell the client
    why, whereas a client that left needs nothing. It is not counted as a model failure.
    """

    request_id: RequestId
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCompleted(Event):
    """What the model produced for the step it was given.

    Attributes:
        step: the number of the :class:`StepPlan` this answers.
        tokens: new token ids per request (one per decode, one after the last prefill chunk,
            none after an intermediate chunk).
        errors: requests the model failed for, with a message; the others go on.
        logprobs: for the requests whose parameters ask for them, one
            :class:`TokenLogprob` per token of ``tokens``.
    """

    step: int
    tokens: Mapping[RequestId, tuple[int, ...]] = field(default_factory=dict)
    errors: Mapping[RequestId, str] = field(default_factory=dict)
    logprobs: Mapping[RequestId, tuple[TokenLogprob, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed(Event):
    """The whole step failed (for example out of memory): every request in it fails."""

    step: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLost(Event):
    """The model is gone for good: everything in flight or waiting fails, and new requests
    are rejected as unavailable."""

    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Drain(Event):
    """Stop admitting new requests; those already accepted go on."""


# ---------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    #: Prompt tokens whose KV was already held (prefix reuse), so not prefilled again.
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Queued(Event):
    """The request waits; ``position`` 1 is next in line."""

    request_id: RequestId
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePositionChanged(Event):
    """A waiting request moved up the line."""

    request_id: RequestId
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Admitted(Event):
    """The request got a slot and joins the running batch at the next step."""

    request_id: RequestId
    slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(Event):
    """Terminal: the request never ran."""

    request_id: RequestId
    reason: RejectReason


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log-probability under the model, with the most likely
    alternatives at its position (best first; as many as the request asked for)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta(Event):
    """New reply text; the concatenation of all deltas is the whole reply.

    ``logprobs`` (when the request asked for them) covers the tokens generated since the
    previous delta, stop tokens excepted: text held back (a possible stop string) carries its
    tokens' log-probabilities with it, and a stop string's own tokens have none.
    """

    request_id: RequestId
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished(Event):
    """Terminal: the request is over and its slot is free."""

    request_id: RequestId
    reason: FinishReason
    usage: Usage
    #: What went wrong, for :attr:`FinishReason.ERROR`.
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SaveKV:
    """Copy the KV of a slot's first ``length`` positions to host memory as ``entry``.

    Transfers carry increasing ``transfer`` numbers; a backend runs each once and skips one
    it already ran (a step retried, or run in parts, carries its transfers again).
    """

    transfer: int
    entry: int
    slot: int
    length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreKV:
    """Copy the first ``length`` positions of host ``entry`` into ``slot`` and free the
    entry; ``request_id`` is the request that takes the slot (it fails if this fails)."""

    transfer: int
    entry: int
    slot: int
    length: int
    request_id: RequestId


@dataclass(frozen=True, slots=True, kw_only=True)
class DropKV:
    """Free host ``entry`` (evicted) of slot group ``group``; no-op if it is unknown."""

    transfer: int
    entry: int
    group: int


#: A copy between the KV cache and host memory, run first in a step.
KVTransfer: TypeAlias = SaveKV | RestoreKV | DropKV


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """Free the model state (KV cache) held for a request that left the batch."""

    request_id: RequestId
    slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefillChunk:
    """Feed part of a prompt into a slot.

    Attributes:
        start: position of ``token_ids[0]`` in the prompt (0 for the first chunk, unless
            the slot already holds the prompt's beginning).
        last: the prompt is complete after this chunk: sample the first new token.
        reused_ids: on a request's first chunk, the prompt's first ``start`` tokens, whose
            KV the slot already holds from an earlier request (prefix reuse): the backend
            keeps positions ``0 .. start - 1`` and treats them as this request's. Empty on
            later chunks.
    """

    request_id: RequestId
    slot: int
    token_ids: tuple[int, ...]
    start: int
    last: bool
    params: GenerationParams
    metadata: Mapping[str, Any] = field(default_factory=dict)
    reused_ids: tuple[int, ...] = ()

    @property
    def first(self) -> bool:
        """This is the request's first chunk: the backend sets up the slot for it."""
        return self.start == len(self.reused_ids)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeItem:
    """Feed the token sampled last and sample the next one.

    Attributes:
        position: position of ``token_id`` in the sequence (prompt included).
    """

    request_id: RequestId
    slot: int
    token_id: int
    position: int
    params: GenerationParams


@dataclass(frozen=True, slots=True, kw_only=True)
class StepPlan(Event):
    """One model step: transfers and releases first, then prefill and decode.

    The driver sends it to the model and answers with :class:`StepCompleted` (or
    :class:`StepFailed`) carrying the same ``step``.
    """

    step: int
    release: tuple[Release, ...] = ()
    prefill: tuple[PrefillChunk, ...] = ()
    decode: tuple[DecodeItem, ...] = ()
    #: Host-memory copies of the prefix cache, run in order before anything else.
    transfers: tuple[KVTransfer, ...] = ()

    @property
    def num_tokens(self) -> int:
        """Tokens this step feeds to the model."""
        return len(self.decode) + sum(len(c.token_ids) for c in self.prefill)


Input: TypeAlias = Submit | Cancel | StepCompleted | StepFailed | ModelLost | Drain
Output: TypeAlias = (
    Queued | QueuePositionChanged | Admitted | Rejected | TextDelta | Finished | StepPlan
)
