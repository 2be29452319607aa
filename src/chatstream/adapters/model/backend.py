"""What a model backend provides: a tokenizer side and a step runner.

A backend is built and used inside the model thread (see :mod:`.model_thread`), except for
:meth:`Backend.decode`, which the engine calls on the event loop for the few new tokens of a
step, and :meth:`Backend.encode`, which adapters call in a worker thread to tokenize prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chatstream.core import KVTransfer, StepCompleted, StepPlan

__all__ = ["Backend", "TransferLog"]


class TransferLog:
    """Which of a plan's transfers a backend has not run yet: a step retried, or run in parts
    to isolate a bad request, carries its transfers again, and each must run once."""

    def __init__(self) -> None:
        self._last = -1

    def new(self, transfers: Sequence[KVTransfer]) -> list[KVTransfer]:
        """The transfers numbered above every one seen so far, now marked as run."""
        fresh = [t for t in transfers if t.transfer > self._last]
        if fresh:
            self._last = fresh[-1].transfer
        return fresh


class Backend(Protocol):
    """A model behind the continuous-batching step interface.

    A backend that sets ``reuses_prefixes = True`` promises to honour
    ``PrefillChunk.reused_ids``: a request's first chunk may start past 0, and the slot's
    positions before it hold the KV of those ids from the slot's previous request (the
    backend keeps a slot's KV when its request is released). Without it, chatstream turns
    prefix reuse off and prefills every prompt from position 0.

    A backend that also sets ``saves_prefixes = True`` runs ``StepPlan.transfers`` before
    the rest of the step, in order: :class:`~chatstream.core.SaveKV` copies a slot's
    prefix to host memory, :class:`~chatstream.core.RestoreKV` copies it back into a slot
    (and frees it; if it cannot, the step result names the restoring request in
    ``errors`` and skips its prefill), :class:`~chatstream.core.DropKV` frees it. A
    transfer whose ``transfer`` number it already ran is skipped: a retried step carries
    its transfers again. Its ``kv_bytes_per_token`` sizes the host budget. Without it,
    chatstream keeps prefixes in slots only.

    A backend that sets ``vocab_size`` (the token ids ``decode`` takes) has ``/detokenize``
    refuse ids outside it with a 400 rather than hand them to ``decode``.
    """

    #: A short name for logs and ``/v1/models``.
    name: str
    #: Token ids that end a reply (the model's and the tokenizer's EOS ids).
    stop_token_ids: frozenset[int]
    #: The longest sequence the model can attend to, or None if unbounded.
    max_context: int | None

    def encode(self, text: str, *, add_special_tokens: bool | None = None) -> list[int]:
        """Tokenize a prompt. Called from a worker thread, never on the event loop."""
        ...

    def decode(self, token_ids: Sequence[int], /) -> str:
        """Detokenize (special tokens skipped). Cheap: called for a few tokens per step."""
        ...

    def run_step(self, plan: StepPlan) -> StepCompleted:
        """Run one step in the model thread: release, prefill, decode, sample.

        A failure confined to some requests is reported in ``StepCompleted.errors``; an
        exception fails every request of the step (the driver turns it into ``StepFailed``)
        and the backend must stay usable for the next step.
        """
        ...

    def close(self) -> None:
        """Free the model's memory; called once, in the model thread."""
        ...
