"""Batched next-token sampling with per-row parameters.

One :meth:`BatchSampler.sample` call picks the next token of every running request of a
step. Each row follows the order of :class:`~chatstream.core.GenerationParams`: the grammar's
mask (a callback from the backend), stop tokens masked before ``min_tokens``, the logit bias,
the repetition penalty, the presence and frequency penalties, then greedy argmax or
temperature, min-p, top-k, top-p and a draw. A row that asks for none of the adjustments costs
nothing for them: each is applied, vectorized, to the rows that use it.

Rows are split by what they need into at most four groups, each handled in one vectorized
pass: greedy rows (an argmax), plain rows (a race over the whole vocabulary), top-k rows (a
race inside a ``topk`` window as wide as the largest k) and top-p-only rows (the same on a
full sort, or on a CPU inside the best 1,024 tokens when they hold the mass top-p keeps).
Nothing reads a tensor value on the host on a GPU, so there the call queues kernels and returns
without a sync (:func:`token_logprobs`, asked for by some requests only, is the exception).

The draw is the exponential race: ``argmax(p / E)`` with ``E ~ Exponential(1)`` picks token
i with probability ``p_i / sum(p)``, so the weights need no normalizing, and each row's noise
can come from its own generator while the race itself stays one batched ``argmax``. A seeded
row draws one noise value per vocabulary entry and looks it up by token id, so its tokens
depend only on its own seed, logits and parameters, not on the other rows of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from chatstream.core import GenerationParams, TokenLogprob

__all__ = ["BatchSampler", "Constrain", "make_generator", "to_device", "token_logprobs"]

#: Masks the disallowed tokens of some rows of a ``[B, V]`` float32 score tensor, in place.
Constrain = Callable[[torch.Tensor], None]

_Generators = Sequence[torch.Generator | None]

_TINY = torch.finfo(torch.float32).tiny


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A random generator on ``device`` seeded with ``seed``, for one request's draws."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class BatchSampler:
    """Samples one token per row of a batch of logits, each row with its own parameters.

    Args:
        stop_token_ids: the model's end-of-sequence ids, masked (with each row's own
            ``stop_token_ids``) while a row has generated fewer than its ``min_tokens``.

    The sampler keeps no state between calls: build one and reuse it for every step.
    """

    __slots__ = ("_stop_token_ids",)

    def __init__(self, stop_token_ids: Collection[int] = ()) -> None:
        self._stop_token_ids = tuple(sorted(stop_token_ids))

    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[GenerationParams],
        *,
        seen: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
        generated: Sequence[int] | None = None,
        generators: _Generators | None = None,
        constrain: Constrain | None = None,
    ) -> torch.Tensor:
        """Pick the next token of every row.

        Args:
            logits: ``[B, V]`` next-token logits, any float dtype; it is not modified. The
                work is done in float32.
            params: the sampling parameters of each of the B rows.
            seen: optional ``[B, V]`` bool mask of the tokens already in each row's
                sequence (prompt and reply), for the repetition penalty (once per distinct
                token: multiplicative divides a positive logit and multiplies a
                non-positive one, subtractive subtracts). Without it no repetition penalty
                is applied.
            counts: optional ``[B, V]`` float32 count of each token in each row's reply so
                far, for the presence and frequency penalties; without it they are not
                applied.
            generated: optional count of the tokens each row generated so far, for
                ``min_tokens``; without it ``min_tokens`` is not applied.
            generators: optional generator of each row (None: the default generator of
                the device). A seeded row gives the same tokens for the same logits
                whatever the other rows of the batch are.
            constrain: optional callback that masks disallowed tokens in place (a grammar);
                it receives the float32 scores before any other adjustment.

        Returns:
            A ``[B]`` int64 tensor of token ids, on the device of ``logits``.

        Raises:
            ValueError: the shapes of ``logits``, ``params``, ``seen``, ``counts``,
                ``generated`` or ``generators`` do not agree.
        """
        _check_shapes(logits, params, seen, counts, generated, generators)
        batch, vocab = logits.shape
        gens: _Generators = generators if generators is not None else [None] * batch
        adjusted = self._adjusted(logits, params, seen, counts, generated, constrain)
        if adjusted is None and all(p.greedy for p in params):
            # The most common fast path: no float copy, one kernel.
            return logits.argmax(dim=-1)
        scores = adjusted if adjusted is not None else logits.float()  # never written to

        greedy: list[int] = []
        plain: list[int] = []
        top_k: list[int] = []
        top_p: list[int] = []
        for row, p in enumerate(params):
            if p.greedy:
                greedy.append(row)
            elif p.top_k is not None and p.top_k < vocab:
                top_k.append(row)
            elif p.top_p < 1.0:
                top_p.append(row)
            else:
                plain.append(row)
        groups = [
            (rows, draw)
            for rows, draw in (
                (greedy, _draw_greedy),
                (plain, _draw_plain),
                # Kept apart so that rows with a small k do not pay for the full sort.
                (top_k, _draw_window),
                (top_p, _draw_nucleus),
            )
            if rows
        ]
        if len(groups) == 1:
            _, draw = groups[0]
            return draw(scores, params, gens)
        tokens = torch.empty(batch, dtype=torch.long, device=logits.device)
        for rows, draw in groups:
            index = to_device(rows, torch.long, logits.device)
            tokens[index] = draw(
                scores.index_select(0, index),
                [params[r] for r in rows],
                [gens[r] for r in rows],
            )
        return tokens

    def _adjusted(
        self,
        logits: torch.Tensor,
        params: Sequence[GenerationParams],
        seen: torch.Tensor | None,
        counts: torch.Tensor | None,
        generated: Sequence[int] | None,
        constrain: Constrain | None,
    ) -> torch.Tensor | None:
        """The float32 scores after every adjustment the rows ask for, or None when no row
        asks for one (the caller's logits are never written to)."""
        early = _early_rows(params, generated)
        bias = any(p.logit_bias for p in params)
        penalize = seen is not None and any(p.repetition_penalty is not None for p in params)
        counted = counts is not None and any(
            p.presence_penalty or p.frequency_penalty for p in params
        )
        if constrain is None and not (early or bias or penalize or counted):
            return None
        scores = logits.float()
        if scores.data_ptr() == logits.data_ptr():
            scores = scores.clone()
        if constrain is not None:
            constrain(scores)
        if early:
            self._mask_stops(scores, params, early)
        if bias:
            _add_bias(scores, params)
        if seen is not None and penalize:
            scores = _penalize(scores, params, seen)
        if counts is not None and counted:
            _penalize_counts(scores, params, counts)
        return scores

    def _mask_stops(
        self, scores: torch.Tensor, params: Sequence[GenerationParams], rows: Sequence[int]
    ) -> None:
        """No stop token for the rows still short of their ``min_tokens``."""
        vocab = scores.shape[-1]
        pairs = [
            (row, token)
            for row in rows
            for token in {*self._stop_token_ids, *params[row].stop_token_ids}
            if token < vocab
        ]
        if pairs:
            index = to_device(pairs, torch.long, scores.device)
            scores[index[:, 0], index[:, 1]] = float("-inf")


def _check_shapes(
    logits: torch.Tensor,
    params: Sequence[GenerationParams],
    seen: torch.Tensor | None,
    counts: torch.Tensor | None,
    generated: Sequence[int] | None,
    generators: _Generators | None,
) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
    batch = logits.shape[0]
    for name, per_row in (("params", params), ("generated", generated), ("generators", generators)):
        if per_row is not None and len(per_row) != batch:
            raise ValueError(f"got {len(per_row)} {name} for {batch} rows of logits")
    for name, tensor, dtype in (("seen", seen, torch.bool), ("counts", counts, torch.float32)):
        if tensor is not None and (tensor.shape != logits.shape or tensor.dtype != dtype):
            raise ValueError(
                f"{name} must be a {dtype} tensor of shape {tuple(logits.shape)}, "
                f"got {tensor.dtype} {tuple(tensor.shape)}"
            )


def _early_rows(params: Sequence[GenerationParams], generated: Sequence[int] | None) -> list[int]:
    """The rows that may not stop yet."""
    if generated is None:
        return []
    return [row for row, p in enumerate(params) if generated[row] < p.min_tokens]


def _add_bias(scores: torch.Tensor, params: Sequence[GenerationParams]) -> None:
    vocab = scores.shape[-1]
    rows, tokens, biases = [], [], []
    for row, p in enumerate(params):
        for token, bias in p.logit_bias:
            if token < vocab:  # the adapter refuses ids past the tokenizer's vocabulary
                rows.append(row)
                tokens.append(token)
                biases.append(bias)
    if rows:
        index = to_device([rows, tokens], torch.long, scores.device)
        values = to_device(biases, torch.float32, scores.device)
        scores.index_put_((index[0], index[1]), values, accumulate=True)


def _penalize_counts(
    scores: torch.Tensor, params: Sequence[GenerationParams], counts: torch.Tensor
) -> None:
    """OpenAI's penalties, in place: ``presence * [count > 0] + frequency * count``."""
    presence = _column([p.presence_penalty for p in params], scores.device)
    frequency = _column([p.frequency_penalty for p in params], scores.device)
    scores.sub_(counts.gt(0).float().mul_(presence).add_(counts * frequency))


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, top: Sequence[int | None]
) -> list[TokenLogprob | None]:
    """The log-probability of each row's token under the raw logits, with its ``top[row]``
    most likely alternatives; None for the rows whose ``top`` is None. Reads the host."""
    rows = [row for row, n in enumerate(top) if n is not None]
    result: list[TokenLogprob | None] = [None] * len(top)
    if not rows:
        return result
    index = to_device(rows, torch.long, logits.device)
    logprobs = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
    chosen = logprobs.gather(-1, tokens.index_select(0, index)[:, None]).squeeze(-1)
    width = max(n or 0 for n in top)
    values: list[list[float]] = [[] for _ in rows]
    ids: list[list[int]] = [[] for _ in rows]
    if width:
        best_values, best_ids = logprobs.topk(width, dim=-1)
        values, ids = best_values.tolist(), best_ids.tolist()
    chosen_list = chosen.tolist()
    token_list = tokens.index_select(0, index).tolist()
    for i, row in enumerate(rows):
        n = top[row] or 0
        alternatives = tuple(zip(ids[i][:n], values[i][:n], strict=True))
        result[row] = TokenLogprob(int(token_list[i]), float(chosen_list[i]), alternatives)
    return result


def to_device(values: Sequence[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of ``values`` (numbers, or nested lists of them) on ``device``."""
    # From pinned memory and non-blocking: a pageable host-to-GPU copy waits for the stream.
    host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """A ``[n, 1]`` float32 column that broadcasts one value per row."""
    return to_device(values, torch.float32, device)[:, None]


def _penalize(
    scores: torch.Tensor, params: Sequence[GenerationParams], seen: torch.Tensor
) -> torch.Tensor:
    """The scores with each row's repetition penalty applied to its seen tokens."""
    # Neutral values (divide by 1, subtract 0) leave the rows without a penalty exact.
    factors = [1.0] * len(params)
    offsets = [0.0] * len(params)
    for row, p in enumerate(params):
        if p.repetition_penalty is None:
            continue
        if p.repetition_penalty_method == "multiplicative":
            factors[row] = p.repetition_penalty
        else:
            offsets[row] = p.repetition_penalty
    multiply = any(f != 1.0 for f in factors)
    subtract = any(o != 0.0 for o in offsets)
    if not (multiply or subtract):
        return scores
    # In place on fresh tensors only: `scores` may be the caller's logits. Few temporaries
    # also matters for speed: on CPU each new [B, V] buffer costs page faults.
    if multiply:
        factor = _column(factors, scores.device)
        # CTRL/HF: always towards less likely, whatever the sign of the logit: divide a
        # positive logit, multiply a negative one. Written without a select on the sign
        # (one side is always 0, so the sum is exact, and -inf stays -inf): a torch.where
        # on a random mask is several times slower on CPU.
        penalized = scores.clamp_min(0).div_(factor).add_(scores.clamp_max(0).mul_(factor))
        if subtract:
            penalized.sub_(_column(offsets, scores.device))
    else:
        penalized = scores - _column(offsets, scores.device)
    # `seen` is a set per row, so each distinct token is penalized once, not per occurrence.
    # It is sparse (a few thousand tokens of a large vocabulary), which keeps this select fast.
    return torch.where(seen, penalized, scores, out=penalized)


def _draw_greedy(
    scores: torch.Tensor, params: Sequence[GenerationParams], generators: _Generators
) -> torch.Tensor:
    return scores.argmax(dim=-1)


def _draw_plain(
    scores: torch.Tensor, params: Sequence[GenerationParams], generators: _Generators
) -> torch.Tensor:
    """Temperature sampling over the whole vocabulary."""
    scaled = scores / _column([p.temperature for p in params], scores.device)
    # exp(z - max): the softmax without its normalizing sum (the race is scale-free), in
    # place on the one fresh buffer.
    weights = scaled.sub_(scaled.amax(dim=-1, keepdim=True)).exp_()
    _apply_min_p(weights, params)
    return _race(weights, generators, None, scores.shape[-1])


def _apply_min_p(weights: torch.Tensor, params: Sequence[GenerationParams]) -> None:
    """Drop, in place, the tokens less than ``min_p`` times as likely as the row's best:
    ``weights`` are probabilities divided by the row's largest, so the test is direct."""
    if any(p.min_p > 0 for p in params):
        weights.masked_fill_(weights < _column([p.min_p for p in params], weights.device), 0.0)


#: The windows of the best tokens a top-p-only row tries in turn; it sorts the whole vocabulary
#: only when none holds the mass top-p keeps (a flat distribution).
_NUCLEUS_WINDOWS = (256, 2048)


def _draw_nucleus(
    scores: torch.Tensor, params: Sequence[GenerationParams], generators: _Generators
) -> torch.Tensor:
    """Top-p without top-k, inside the smallest window of the best tokens that holds the mass
    ``top_p`` keeps (a sort of the whole vocabulary costs ~4 ms a row on a CPU); the rows no
    window serves go to :func:`_draw_window`, over the whole vocabulary."""
    device = scores.device
    vocab = scores.shape[-1]
    # On a GPU the sort is cheap and the coverage test would cost a host sync.
    if device.type != "cpu":
        return _draw_window(scores, params, generators)
    scaled = scores / _column([p.temperature for p in params], device)
    # Each token's mass relative to the row's best, after min-p, and the row's total.
    mass = scaled.sub_(scaled.amax(dim=-1, keepdim=True)).exp_()
    _apply_min_p(mass, params)
    limits = _column([p.top_p for p in params], device) * mass.sum(dim=-1, keepdim=True)
    tokens = torch.empty(len(params), dtype=torch.long, device=device)
    rows = list(range(len(params)))
    for width in _NUCLEUS_WINDOWS:
        if width >= vocab or not rows:
            break
        index = to_device(rows, torch.long, device)
        weights, ids = mass.index_select(0, index).topk(width, dim=-1)
        cumulative = weights.cumsum(dim=-1)
        row_limits = limits.index_select(0, index)
        covered = (cumulative[:, -1:] >= row_limits).squeeze(-1).tolist()
        served = [i for i, ok in enumerate(covered) if ok]
        if served:
            keep = to_device(served, torch.long, device)
            # The whole sort's rule: keep a token while the mass before it is below p.
            kept = weights.masked_fill(cumulative - weights >= row_limits, 0.0).index_select(
                0, keep
            )
            kept_ids = ids.index_select(0, keep)
            choice = _race(kept, [generators[rows[i]] for i in served], kept_ids, vocab)
            tokens[to_device([rows[i] for i in served], torch.long, device)] = kept_ids.gather(
                -1, choice[:, None]
            ).squeeze(-1)
        rows = [row for row, ok in zip(rows, covered, strict=True) if not ok]
    if rows:
        index = to_device(rows, torch.long, device)
        tokens[index] = _draw_window(
            scores.index_select(0, index), [params[r] for r in rows], [generators[r] for r in rows]
        )
    return tokens


def _draw_window(
    scores: torch.Tensor, params: Sequence[GenerationParams], generators: _Generators
) -> torch.Tensor:
    """Temperature, top-k and top-p sampling inside a sorted window of the best tokens."""
    device = scores.device
    vocab = scores.shape[-1]
    ks = [vocab if p.top_k is None else min(p.top_k, vocab) for p in params]
    width = max(ks)
    # Sorted descending; a positive temperature does not change the order.
    values, ids = scores.topk(width, dim=-1)
    values = values / _column([p.temperature for p in params], device)
    if min(ks) < width:
        positions = torch.arange(width, device=device)
        values = values.masked_fill(positions >= _column(ks, device), float("-inf"))
    # Column 0 holds the row's maximum. No normalizing sum: the race is scale-free, and a
    # sum over the window would round differently as other rows change its width.
    weights = (values - values[:, :1]).exp()
    _apply_min_p(weights, params)
    if any(p.top_p < 1.0 for p in params):
        cumulative = weights.cumsum(dim=-1)
        before = cumulative - weights  # the mass of the more likely tokens
        # inf for rows without top-p: rounding must not drop their last tokens.
        limits = _column([p.top_p if p.top_p < 1.0 else float("inf") for p in params], device)
        # Keep a token while the mass before it is below p: the smallest set reaching p,
        # never empty (nothing is before the first token).
        weights = weights.masked_fill(before >= limits * cumulative[:, -1:], 0.0)
    choice = _race(weights, generators, ids, vocab)
    return ids.gather(-1, choice[:, None]).squeeze(-1)


def _race(
    weights: torch.Tensor, generators: _Generators, ids: torch.Tensor | None, vocab: int
) -> torch.Tensor:
    """The column of ``argmax(weights / E)`` per row, ``E ~ Exponential(1)``.

    Args:
        weights: ``[n, w]`` non-negative, unnormalized probabilities; overwritten.
        generators: each row's generator, or None for the default one.
        ids: ``[n, w]`` vocabulary id of each column, or None when the columns are the
            vocabulary itself.
        vocab: the vocabulary size.
    """
    rows, width = weights.shape
    device = weights.device
    seeded = [row for row, g in enumerate(generators) if g is not None]
    if not seeded:
        uniform = torch.rand(rows, width, device=device)
    else:
        # A whole-vocabulary draw per seeded row, looked up by token id: the same numbers
        # meet the same tokens whatever window width the other rows of the batch need.
        own = torch.stack(
            [torch.rand(vocab, device=device, generator=generators[row]) for row in seeded]
        )
        index = to_device(seeded, torch.long, device)
        if ids is not None:
            own = own.gather(-1, ids.index_select(0, index))
        if len(seeded) == rows:
            uniform = own
        else:
            uniform = torch.rand(rows, width, device=device)
            uniform[index] = own
    # -log(U) is Exponential(1); rand + log is several times faster than exponential_ on
    # CPU. Clamping U away from 0 keeps E finite, and U < 1 keeps E > 0, so every kept
    # token scores above 0 and an excluded one (weight 0) scores 0: it never wins.
    exponential = uniform.clamp_min_(_TINY).log_().neg_()
    return weights.div_(exponential).argmax(dim=-1)
