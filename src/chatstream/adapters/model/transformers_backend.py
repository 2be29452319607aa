"""Continuous batching for any HuggingFace ``AutoModelForCausalLM``.

One :meth:`TransformersBackend.run_step` runs one :class:`~chatstream.core.StepPlan`:
releases first, then every prefill chunk in one batched forward (left-padded, each into its
slot of the :class:`~.slot_cache.SlotKVCache`), then one batched forward for every decoding
request, then one batched sampling call. The sampled tokens and NaN flags cross to the host in a
single transfer per step.

The forward keyword for the cache is ``cache`` from transformers 5.24 and
``past_key_values`` before; the backend asks the model's signature which one it takes.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from chatstream.core import (
    DecodeItem,
    DropKV,
    GenerationParams,
    Grammar,
    KVTransfer,
    PrefillChunk,
    RequestId,
    RestoreKV,
    SaveKV,
    StepCompleted,
    StepPlan,
    TokenLogprob,
)

from .backend import TransferLog
from .decode_graphs import Capturer, DecodeGraphs, GraphOption, capturer_for
from .grammar import CompiledGrammar, GrammarError, GrammarMatcher, Grammars
from .sampling import BatchSampler, make_generator, to_device, token_logprobs
from .shared_prefill import HeldTokens
from .slot_cache import SCRATCH_COLUMN, SlotKVCache
from .split_attention import RowGroup, plan_split, split_attention, splittable

__all__ = ["TransformersBackend", "resolve_device"]

logger = logging.getLogger("chatstream")


def resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    """The device inputs go to: the given one, else where the input embeddings live."""
    if device is not None:
        return torch.device(device)
    embeddings = model.get_input_embeddings()  # type: ignore[operator]
    return torch.device(embeddings.weight.device)


@dataclass(slots=True)
class _Slot:
    request_id: RequestId
    params: GenerationParams
    generator: torch.Generator | None = None
    #: Tokens sampled for this request so far (for ``min_tokens``).
    generated: int = 0
    #: Where the request's grammar stands, if it has one.
    matcher: GrammarMatcher | None = None


class TransformersBackend:
    """A :class:`~.backend.Backend` over a transformers model and tokenizer.

    A slot's KV stays in its row after its request leaves; a request whose first chunk
    names ``reused_ids`` (the engine found them there, or had them copied back from host
    memory by a :class:`~chatstream.core.RestoreKV`) attends to them as its own prefix.

    Args:
        model: a causal LM (``AutoModelForCausalLM``), already on its device(s).
        tokenizer: its tokenizer.
        num_slots: requests decoded together (``num_of_concurrent_executions``).
        max_positions: longest sequence a slot holds (prompt + reply); capped by the
            model's ``max_position_embeddings``.
        device: where inputs go; None: where the model's input embeddings are.
        name: the model's name for logs and ``/v1/models``.
        split_attention: let a decode step whose rows' lengths differ a lot attend in a long
            and a short group, each over its own columns (models on ``sdpa`` only; see
            :mod:`.split_attention`).
        cuda_graphs: replay decode steps from CUDA graphs (see :mod:`.decode_graphs`):
            ``"auto"`` and True on a CUDA device (not for a model spread over several
            devices with "auto"), never elsewhere; False: always eager.
        graph_capturer: what captures the graphs instead of CUDA (a test's stand-in, which
            turns graphs on whatever the device).
    """

    #: It honours ``PrefillChunk.reused_ids`` (the engine may reuse prefixes).
    reuses_prefixes = True
    #: It runs ``StepPlan.transfers`` (the engine may keep prefixes in host memory).
    saves_prefixes = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        num_slots: int,
        max_positions: int,
        device: str | torch.device | None = None,
        name: str | None = None,
        split_attention: bool = True,
        cuda_graphs: GraphOption = "auto",
        graph_capturer: Capturer | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or str(getattr(model.config, "_name_or_path", "") or "model")
        self.device = resolve_device(device, model)
        model_limit = _max_positions(model.config)
        self.max_context: int | None = (
            min(max_positions, model_limit) if model_limit else max_positions
        )
        self.stop_token_ids = _stop_token_ids(model, tokenizer)
        #: Token ids the tokenizer knows (added tokens included): what ``decode`` takes.
        self.vocab_size = len(tokenizer)
        self._cache = SlotKVCache(
            num_layers=int(model.config.num_hidden_layers),
            num_slots=num_slots,
            max_positions=max_positions if self.max_context is None else self.max_context,
        )
        parameters = inspect.signature(model.forward).parameters
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self._extra: dict[str, Any] = {}
        if "logits_to_keep" in parameters:
            self._extra["logits_to_keep"] = 1
        self._slots: dict[int, _Slot] = {}
        #: Host copies of prefixes no slot holds any more, by entry (see ``run_step``).
        self._saved: dict[int, list[torch.Tensor]] = {}
        self._transfers = TransferLog()
        self._held = HeldTokens(num_slots)
        #: Prompt tokens whose KV was copied from another slot instead of computed.
        self.shared_prefill_tokens = 0
        self._sampler = BatchSampler(self.stop_token_ids)
        # Made on the first request with a grammar (reading the vocabulary takes ~0.4 s).
        self._grammars: Grammars | None = None
        self._grammars_lock = threading.Lock()
        vocab = int(model.config.vocab_size)
        # Tokens each slot has seen, for the repetition penalty: kept up to date at every
        # step (a scatter of a few ids), read only by rows that use a penalty.
        self._seen = torch.zeros((num_slots, vocab), dtype=torch.bool, device=self.device)
        # How often each slot's request generated each token, for the presence and frequency
        # penalties: made when a first request asks for them (a row's counts are exact from
        # its own first chunk on, which resets them).
        self._counts: torch.Tensor | None = None
        # The engine decodes a few ids per request at every step on the event loop; a fast
        # tokenizer's own decoder does that without the Python layers of
        # ``tokenizer.decode``, which would only add a space clean-up when one is set.
        self._rust_decode: Callable[..., str] | None = None
        rust: Any = getattr(tokenizer, "_tokenizer", None)
        if callable(getattr(rust, "decode", None)) and not getattr(
            tokenizer, "clean_up_tokenization_spaces", True
        ):
            self._rust_decode = rust.decode
        self._dtype = next(model.parameters()).dtype
        #: What one token's KV takes, all layers, keys and values (for prefix statistics).
        self.kv_bytes_per_token = _kv_bytes_per_token(model.config, self._dtype)
        self._split = split_attention and splittable(model)
        # The decode step's additive attention mask, one row per slot, kept up to date as
        # requests come and go: a step opens one column per decoding row instead of
        # building a [batch, length] mask. A free slot sees only the scratch column; a
        # request's row, its tokens so far.
        self._hidden = torch.finfo(self._dtype).min
        self._mask = torch.full(
            (num_slots, self._cache.max_positions + 1),
            self._hidden,
            dtype=self._dtype,
            device=self.device,
        )
        self._mask[:, SCRATCH_COLUMN] = 0
        if graph_capturer is None:
            spread = len({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
            option = False if cuda_graphs == "auto" and spread > 1 else cuda_graphs
            graph_capturer = capturer_for(option, self.device)
        self._graphs: DecodeGraphs | None = None
        if graph_capturer is not None:
            self._graphs = DecodeGraphs(
                graph_capturer,
                self._graph_forward,
                num_slots=num_slots,
                max_columns=self._cache.max_positions + 1,
                device=self.device,
            )
        #: Decode forwards replayed from a CUDA graph, and run eagerly.
        self.graph_decode_steps = 0
        self.eager_decode_steps = 0
        model.eval()

    # ------------------------------------------------------------------ tokenizer side

    def encode(self, text: str, *, add_special_tokens: bool | None = None) -> list[int]:
        if add_special_tokens is None:
            return list(self.tokenizer(text)["input_ids"])
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int], /) -> str:
        if self._rust_decode is not None:
            return self._rust_decode(list(token_ids), skip_special_tokens=True)
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def check_grammar(self, grammar: Grammar) -> None:
        """Compile ``grammar`` (and keep it for the request that uses it). Called from worker
        threads at the edge, so that a bad schema is the client's 400.

        Raises:
            GrammarError: the schema, expression or grammar cannot be used.
        """
        self._compile(grammar)

    def _compile(self, grammar: Grammar) -> CompiledGrammar:
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = Grammars(
                    self.tokenizer,
                    int(self.model.config.vocab_size),
                    stop_token_ids=self.stop_token_ids,
                )
        return self._grammars.compile(grammar.kind, grammar.source, strict=grammar.strict)

    # ------------------------------------------------------------------ steps

    @torch.inference_mode()
    def run_step(self, plan: StepPlan) -> StepCompleted:
        errors: dict[RequestId, str] = {}
        for transfer in self._transfers.new(plan.transfers):  # each runs once
            self._run_transfer(transfer, errors)
        for release in plan.release:
            self._slots.pop(release.slot, None)
            self._mask[release.slot] = self._hidden
            self._mask[release.slot, SCRATCH_COLUMN] = 0
        rows: list[tuple[RequestId, int, GenerationParams]] = []
        logits: list[torch.Tensor] = []
        try:
            for chunk, last_logits in self._prefill_sharing(plan.prefill, errors):
                if chunk.last:
                    rows.append((chunk.request_id, chunk.slot, chunk.params))
                    logits.append(last_logits[None, :])
            if plan.decode:
                rows += [(d.request_id, d.slot, d.params) for d in plan.decode]
                logits.append(self._decode(plan.decode))
        except BaseException:
            # Whatever the step wrote is not known: no slot of it lends its KV any more.
            self._held.forget([c.slot for c in plan.prefill] + [d.slot for d in plan.decode])
            raise
        if not rows:
            return StepCompleted(step=plan.step, errors=errors)
        # The batch's slots, for the sampler's per-slot state.
        slots = to_device([slot for _, slot, _ in rows], torch.long, self.device)
        # One batch of last-position logits (no copy when a single forward made them all).
        batch = logits[0] if len(logits) == 1 else torch.cat(logits)
        return self._sample(plan.step, rows, batch, slots, errors)

    def _run_transfer(self, transfer: KVTransfer, errors: dict[RequestId, str]) -> None:
        """One copy between the KV cache and host memory; a failure is the restoring
        request's alone (a save that failed is found missing when it is restored)."""
        try:
            match transfer:
                case SaveKV(entry=entry, slot=slot, length=length):
                    self._saved[entry] = self._cache.save(slot, length)
                case RestoreKV(entry=entry, slot=slot, length=length, request_id=request_id):
                    self._held.forget([slot])  # its first chunk names what it holds
                    copies = self._saved.pop(entry, None)
                    if copies is None:
                        errors[request_id] = "the saved conversation state is gone"
                        return
                    self._cache.restore(slot, copies, length)
                case DropKV(entry=entry):
                    self._saved.pop(entry, None)
        except Exception as error:
            logger.warning("prefix cache transfer %r failed", transfer, exc_info=error)
            if isinstance(transfer, RestoreKV):
                errors[transfer.request_id] = (
                    f"the model failed on this request ({type(error).__name__})"
                )

    def close(self) -> None:
        if self._graphs is not None:
            self._graphs.close()
        self._saved.clear()
        self._slots.clear()
        self._cache = SlotKVCache(num_layers=0, num_slots=0, max_positions=0)

    # ------------------------------------------------------------------ internals

    def _prefill_sharing(
        self, chunks: Sequence[PrefillChunk], errors: dict[RequestId, str]
    ) -> list[tuple[PrefillChunk, torch.Tensor]]:
        """Every chunk, copying from other slots the KV they already hold (see
        :mod:`.shared_prefill`): the chunks that repeat another chunk of this step go in a
        second round, after it."""
        chunks = tuple(c for c in chunks if c.request_id not in errors)
        leaders, followers = self._held.split_followers(chunks)
        done = self._prefill_copying(leaders, errors)
        if followers:
            done += self._prefill_copying(
                tuple(c for c in followers if c.request_id not in errors), errors
            )
        return done

    def _prefill_copying(
        self, chunks: tuple[PrefillChunk, ...], errors: dict[RequestId, str]
    ) -> list[tuple[PrefillChunk, torch.Tensor]]:
        chunks, copies = self._held.plan_copies(chunks)
        for copy in copies:
            self._cache.copy(copy.source, copy.target, copy.length)
            self.shared_prefill_tokens += copy.length
        return self._prefill_all(chunks, errors)

    def _prefill_all(
        self, chunks: tuple[PrefillChunk, ...], errors: dict[RequestId, str]
    ) -> list[tuple[PrefillChunk, torch.Tensor]]:
        """Prefill every chunk in one batched forward; if that fails, chunk by chunk, so
        that one prompt's failure is that request's alone."""
        if not chunks:
            return []
        for chunk in chunks:
            if chunk.first:
                generator = None
                if chunk.params.seed is not None:
                    generator = make_generator(chunk.params.seed, self.device)
                matcher = None
                if chunk.params.grammar is not None:
                    try:
                        matcher = self._compile(chunk.params.grammar).matcher()
                    except GrammarError as error:  # checked at the edge: a cache eviction
                        errors[chunk.request_id] = f"the grammar cannot be used: {error}"
                        continue
                self._slots[chunk.slot] = _Slot(
                    chunk.request_id, chunk.params, generator, matcher=matcher
                )
                self._seen[chunk.slot] = False
                if self._counts is None and _counts_tokens(chunk.params):
                    self._counts = torch.zeros(self._seen.shape, device=self.device)
                if self._counts is not None:
                    self._counts[chunk.slot] = 0
                if chunk.reused_ids:
                    # The slot still holds the KV of these ids from an earlier request.
                    reused = to_device(list(chunk.reused_ids), torch.long, self.device)
                    self._seen[chunk.slot, reused] = True
        chunks = tuple(c for c in chunks if c.request_id not in errors)
        if not chunks:
            return []
        try:
            done = list(zip(chunks, self._prefill(chunks), strict=True))
        except Exception as error:
            self._held.forget(c.slot for c in chunks)
            if len(chunks) == 1:
                # Its own failure only, in words that quote nothing of the model's internals;
                # the traceback goes to the log.
                request_id = chunks[0].request_id
                logger.warning("the prompt of request %d failed", request_id, exc_info=error)
                errors[request_id] = f"the model failed on this request ({type(error).__name__})"
                return []
        else:
            for chunk in chunks:
                self._held.prefilled(chunk)
            return done
        one_by_one: list[tuple[PrefillChunk, torch.Tensor]] = []
        for chunk in chunks:
            one_by_one += self._prefill_all((chunk,), errors)
        return one_by_one

    def _prefill(self, chunks: tuple[PrefillChunk, ...]) -> torch.Tensor:
        # Prompts of different lengths go in one batch, left-padded so that each row's last
        # token is the batch's last column. Padding writes to the scratch column and attends
        # only to it; a real query at position p sees columns 1 .. p + 1.
        width = max(len(c.token_ids) for c in chunks)
        pads = [[0] * (width - len(c.token_ids)) for c in chunks]
        ids, positions, real = to_device(  # one transfer
            [
                [pad + list(c.token_ids) for pad, c in zip(pads, chunks, strict=True)],
                [
                    pad + list(range(c.start, c.start + len(c.token_ids)))
                    for pad, c in zip(pads, chunks, strict=True)
                ],
                [pad + [1] * len(c.token_ids) for pad, c in zip(pads, chunks, strict=True)],
            ],
            torch.long,
            self.device,
        )
        real = real.bool()
        write = torch.where(real, positions + 1, SCRATCH_COLUMN)
        kv_columns = max(c.start + len(c.token_ids) for c in chunks) + 1
        columns = torch.arange(kv_columns, device=self.device)[None, None, :]
        visible = torch.where(
            real[:, :, None],
            (columns >= 1) & (columns <= write[:, :, None]),
            columns == SCRATCH_COLUMN,
        )
        mask = torch.zeros(visible.shape, dtype=self._dtype, device=self.device)
        mask.masked_fill_(~visible, self._hidden)
        slots = [c.slot for c in chunks]
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        rows = slice(slots[0], slots[0] + len(slots)) if contiguous else slots
        self._cache.plan_write(rows, write, kv_columns)
        out = self._forward(ids, positions, mask[:, None, :, :])
        for row, chunk in enumerate(chunks):
            size = len(chunk.token_ids)
            self._seen[chunk.slot, ids[row, width - size :]] = True
            # Decode steps see the prompt from now on, and never the scratch column. Changed
            # only now that the forward went well, so that a row always sees something of
            # its own: a free slot's row, its scratch column; a request's row, its tokens.
            # A first chunk also opens the columns of a reused prefix (1 .. start).
            if chunk.first:
                self._mask[chunk.slot] = self._hidden
            opened_from = 1 if chunk.first else chunk.start + 1
            self._mask[chunk.slot, opened_from : chunk.start + size + 1] = 0
        return out[:, -1]

    def _decode(self, items: tuple[DecodeItem, ...]) -> torch.Tensor:
        """One forward for every decoding request: their logits ``[len(items), V]``, in the
        order of ``items``."""
        if self._graphs is not None:
            out = self._decode_replayed(self._graphs, items)
            if out is not None:
                self.graph_decode_steps += 1
                return out
        self.eager_decode_steps += 1
        low = min(d.slot for d in items)
        high = max(d.slot for d in items) + 1
        batch = high - low
        tokens = [0] * batch
        positions = [0] * batch
        live = [0] * batch
        order = [d.slot - low for d in items]
        for d in items:
            tokens[d.slot - low] = d.token_id
            positions[d.slot - low] = d.position
            live[d.slot - low] = 1
        columns_needed = [
            p + 2 if is_live else 1 for p, is_live in zip(positions, live, strict=True)
        ]
        split = plan_split(columns_needed) if self._split else None
        rows = [tokens, positions, live, order + [0] * (batch - len(items))]
        if split is not None:
            rows.append(split[0] + split[2])  # batch rows, short group first
        step = to_device(rows, torch.long, self.device)  # the step's inputs in one transfer
        kv_columns = max(d.position for d in items) + 2
        groups = None
        if split is not None:
            short, short_columns, long, long_columns = split
            groups = (
                RowGroup(_rows(short, step[4, : len(short)]), short_columns),
                RowGroup(_rows(long, step[4, len(short) :]), long_columns),
            )
        out = self._decode_forward(step[:3], low, kv_columns, groups)
        for item in items:
            self._held.decoded(item.slot, item.token_id, item.position)
        if order == list(range(batch)):
            return out[:, -1]
        return out[step[3, : len(items)], -1]

    def _decode_replayed(
        self, graphs: DecodeGraphs, items: tuple[DecodeItem, ...]
    ) -> torch.Tensor | None:
        """The decode step from a graph over slots ``0 .. size - 1``, or None: run it eagerly."""
        high = max(d.slot for d in items) + 1
        tokens = [0] * high
        positions = [-1] * high  # not decoding now
        for d in items:
            tokens[d.slot] = d.token_id
            positions[d.slot] = d.position
        out = graphs.run(tokens, positions, [d.slot for d in items])
        if out is not None:
            for item in items:
                self._held.decoded(item.slot, item.token_id, item.position)
        return out

    def _graph_forward(self, inputs: torch.Tensor, columns: int) -> torch.Tensor:
        """The forward a decode graph captures: batch row ``i`` is slot ``i``, inputs only
        from the static ``inputs`` (token ids, positions, live flags)."""
        return self._decode_forward(inputs, 0, columns, None)[:, -1]

    def _decode_forward(
        self,
        step: torch.Tensor,
        low: int,
        kv_columns: int,
        groups: tuple[RowGroup, RowGroup] | None,
    ) -> torch.Tensor:
        """The decode forward of slots ``low ..`` (one per column of ``step``: token ids,
        positions, live flags), reading ``kv_columns`` columns of the cache."""
        ids, position_ids = step[0, :, None], step[1, :, None]
        is_live = step[2, :, None].bool()
        # Rows between decoding slots that do not decode now (free, or still prefilling)
        # write to the scratch column, and their mask stays as it is.
        write = torch.where(is_live, position_ids + 1, SCRATCH_COLUMN)
        mask = self._mask[low : low + step.shape[1]]
        mask.scatter_(1, write, torch.where(is_live, 0.0, mask[:, :1]))
        self._cache.plan_write(slice(low, low + step.shape[1]), write, kv_columns)
        decode_mask = mask[:, None, None, :kv_columns]
        if groups is None:
            return self._forward(ids, position_ids, decode_mask)
        with split_attention(self.model, groups):
            return self._forward(ids, position_ids, decode_mask)

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        # An additive float mask: transformers passes a 4D mask through unchanged, and
        # every attention implementation (sdpa, eager) accepts the additive form.
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_keyword: self._cache},
            **self._extra,
        )
        return out.logits  # type: ignore[no-any-return]

    def _sample(
        self,
        step: int,
        rows: list[tuple[RequestId, int, GenerationParams]],
        batch: torch.Tensor,
        slot_index: torch.Tensor,
        errors: dict[RequestId, str],
    ) -> StepCompleted:
        params = [p for _, _, p in rows]
        slots = [self._slots[slot] for _, slot, _ in rows]
        seen = None
        if any(p.repetition_penalty is not None for p in params):
            seen = self._seen[slot_index]
        counts = None
        if self._counts is not None and any(_counts_tokens(p) for p in params):
            counts = self._counts[slot_index]
        matchers = [slot.matcher for slot in slots]
        constrain = None
        if self._grammars is not None and any(matchers):
            grammars = self._grammars

            def constrain(scores: torch.Tensor) -> None:
                grammars.mask_logits(scores, matchers)

        sampled = self._sampler.sample(
            batch,
            params,
            seen=seen,
            counts=counts,
            generated=[slot.generated for slot in slots],
            generators=[slot.generator for slot in slots],
            constrain=constrain,
        )
        broken = torch.isnan(batch).any(dim=-1)
        self._seen[slot_index, sampled] = True
        if self._counts is not None:
            self._counts.index_put_((slot_index, sampled), _ONE.to(self.device), accumulate=True)
        logprobs = token_logprobs(batch, sampled, [p.logprobs for p in params])
        # The one host sync of the step (another above for the requests that want logprobs).
        tokens, nan_rows = torch.stack([sampled, broken.long()]).tolist()
        result: dict[RequestId, tuple[int, ...]] = {}
        reported: dict[RequestId, tuple[TokenLogprob, ...]] = {}
        for (request_id, _, _), slot, token, is_nan, logprob in zip(
            rows, slots, tokens, nan_rows, logprobs, strict=True
        ):
            if is_nan:
                errors[request_id] = "the model produced NaN logits"
                continue
            slot.generated += 1
            if slot.matcher is not None:
                slot.matcher.accept(int(token))
            result[request_id] = (int(token),)
            if logprob is not None:
                reported[request_id] = (logprob,)
        return StepCompleted(step=step, tokens=result, errors=errors, logprobs=reported)


_ONE = torch.ones(())


def _counts_tokens(params: GenerationParams) -> bool:
    """Whether a request needs the counts of the tokens it generated."""
    return bool(params.presence_penalty or params.frequency_penalty)


def _rows(rows: list[int], on_device: torch.Tensor) -> slice | torch.Tensor:
    """A group's batch rows: a range when they are one (a view, no copy), else indices."""
    first = min(rows)
    if sorted(rows) == list(range(first, first + len(rows))):
        return slice(first, first + len(rows))
    return on_device


def _kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or (
        int(getattr(config, "hidden_size", 0)) // heads if heads else 0
    )
    layers = int(getattr(config, "num_hidden_layers", 0))
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * kv_heads * int(head_dim) * element


def _max_positions(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
