"""The mock backend (``use_mock_response=True``): canned replies, no model, no torch.

It plays the part of a model behind the same step interface as the real backend and runs
in the same model thread, so everything above it (engine, driver, HTTP, web UI) is exercised
for real, at the pace ``mock_params`` asks for:

* ``"round"``: one line per turn of a short story (line ``turn``, wrapping after 12);
* ``"long"``: a long multi-paragraph story;
* ``"echo"``: the user's input back.

Replies are in Japanese when the user wrote Japanese. English is streamed word by word and
Japanese character by character, as the original did, but mixed text is split by script
rather than by a global rule.

It keeps prefixes as a model would: each slot remembers the token ids written into it, so a
request that reuses a slot's prefix (``PrefillChunk.reused_ids``) is checked against what
the slot really holds, and fails loudly if the engine ever reused the wrong ids. Host-memory
transfers copy those ids to and from :attr:`MockBackend.saved`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence

from chatstream.core import (
    DropKV,
    KVTransfer,
    MockParams,
    RequestId,
    RestoreKV,
    SaveKV,
    StepCompleted,
    StepPlan,
)

from . import mock_texts
from .backend import TransferLog

__all__ = ["END_OF_REPLY", "MockBackend", "MockTokenizer", "split_pieces"]

#: Token id that ends a reply (the code point U+0000, never in a prompt).
END_OF_REPLY = 0
_PIECE_BASE = 0x110000  # ids above every code point name whole pieces
_WIDE = "\u3000-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef"
_PIECES = re.compile(rf"[{_WIDE}]|\s*[^\s{_WIDE}]+|\s+")


def split_pieces(text: str) -> list[str]:
    """Japanese and other wide characters one by one; other words with their leading space."""
    return _PIECES.findall(text)


def _is_japanese(text: str) -> bool:
    return re.search(rf"[{_WIDE}]", text) is not None


class MockTokenizer:
    """Prompts are code points; replies are whole pieces (words or characters)."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def encode(self, text: str, *, add_special_tokens: bool | None = None) -> list[int]:
        return [ord(c) for c in text if c != "\0"]

    def decode(self, token_ids: Sequence[int], /) -> str:
        pieces = self._pieces
        return "".join(
            pieces[t - _PIECE_BASE] if t >= _PIECE_BASE else chr(t)
            for t in token_ids
            if t != END_OF_REPLY
        )

    @property
    def vocab_size(self) -> int:
        """Every code point, then the pieces named so far."""
        return _PIECE_BASE + len(self._pieces)

    def piece_ids(self, text: str) -> list[int]:
        out = []
        with self._lock:
            for piece in split_pieces(text):
                token = self._ids.get(piece)
                if token is None:
                    token = _PIECE_BASE + len(self._pieces)
                    self._pieces.append(piece)
                    self._ids[piece] = token
                out.append(token)
        return out


class MockBackend(MockTokenizer):
    """A :class:`~.backend.Backend` that replies with canned text."""

    name = "mock"
    stop_token_ids = frozenset({END_OF_REPLY})
    max_context: int | None = None
    #: It honours ``PrefillChunk.reused_ids`` (the engine may reuse prefixes).
    reuses_prefixes = True
    #: It runs ``StepPlan.transfers`` (the engine may keep prefixes in host memory).
    saves_prefixes = True
    #: A nominal KV size (that of a small model), so that the host budget applies.
    kv_bytes_per_token = 1024

    def __init__(self, params: MockParams | None = None) -> None:
        super().__init__()
        self.params = params or MockParams()
        self._scripts: dict[RequestId, list[int]] = {}
        #: The token ids each slot holds, as a model's KV cache would.
        self._held: dict[int, list[int]] = {}
        #: The token ids each host entry holds.
        self.saved: dict[int, list[int]] = {}
        self._transfers = TransferLog()
        #: Prompt tokens not fed again thanks to prefix reuse, over all requests.
        self.reused_tokens = 0
        #: Of those, tokens copied back from host memory.
        self.restored_tokens = 0

    def reply_text(self, user_input: str, turn: int) -> str:
        """What the mock answers to ``user_input`` at turn ``turn`` (1 is the first)."""
        if self.params.type == "echo":
            return user_input
        japanese = _is_japanese(user_input)
        if self.params.type == "round":
            lines = mock_texts.ROUND_JA if japanese else mock_texts.ROUND_EN
            return lines[(max(turn, 1) - 1) % len(lines)]
        return mock_texts.LONG_JA if japanese else mock_texts.LONG_EN

    def run_step(self, plan: StepPlan) -> StepCompleted:
        errors: dict[RequestId, str] = {}
        for transfer in self._transfers.new(plan.transfers):  # each runs once
            self._run_transfer(transfer, errors)
        for release in plan.release:
            self._scripts.pop(release.request_id, None)
        wait = 0.0
        for chunk in plan.prefill:
            if chunk.request_id in errors:
                continue
            held = self._held.setdefault(chunk.slot, [])
            if chunk.first and held[: chunk.start] != list(chunk.reused_ids):
                errors[chunk.request_id] = "prefix reuse of ids the slot does not hold"
                continue
            del held[chunk.start :]
            held.extend(chunk.token_ids)
            if chunk.first:
                self.reused_tokens += chunk.start
                user_input = str(chunk.metadata.get("user_input", ""))
                turn = int(str(chunk.metadata.get("turn", 1)))
                script = [*self.piece_ids(self.reply_text(user_input, turn)), END_OF_REPLY]
                self._scripts[chunk.request_id] = script
                wait = max(wait, self.params.initial_wait_sec)
        for item in plan.decode:
            held = self._held.setdefault(item.slot, [])
            del held[item.position :]
            held.append(item.token_id)
        sampling = [c.request_id for c in plan.prefill if c.last]
        sampling += [d.request_id for d in plan.decode]
        sampling = [r for r in sampling if r not in errors]
        if sampling:
            wait += self.params.time_per_token_sec
        time.sleep(wait)
        tokens = {}
        for request_id in sampling:
            script = self._scripts[request_id]
            tokens[request_id] = (script.pop(0) if script else END_OF_REPLY,)
        return StepCompleted(step=plan.step, tokens=tokens, errors=errors)

    def _run_transfer(self, transfer: KVTransfer, errors: dict[RequestId, str]) -> None:
        match transfer:
            case SaveKV(entry=entry, slot=slot, length=length):
                # Shorter than ``length`` if the engine got it wrong: restoring it fails.
                self.saved[entry] = self._held.get(slot, [])[:length]
            case RestoreKV(entry=entry, slot=slot, length=length, request_id=request_id):
                saved = self.saved.pop(entry, None)
                if saved is None or len(saved) < length:
                    errors[request_id] = "the saved prefix is gone"
                    return
                self._held[slot] = saved[:length]
                self.restored_tokens += length
            case DropKV(entry=entry):
                self.saved.pop(entry, None)

    def close(self) -> None:
        self._scripts.clear()
        self._held.clear()
        self.saved.clear()
