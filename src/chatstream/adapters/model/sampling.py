"""Batched next-token sampling with per-row parameters.

One :meth:`BatchSampler.sample` call picks the next token of every running request of a
step. Each row follows the HuggingFace logits-processor order for its own
:class:`~chatstream.core.GenerationParams`: repetition penalty, then greedy argmax or
temperature, top-k, top-p and a draw.

Rows are split by what they need into at most four groups, each handled in one vectorized
pass: greedy rows (an argmax), plain rows (a race over the whole vocabulary), top-k rows (a
race inside a ``topk`` window as wide as the largest k) and top-p-only rows (the same on a
full sort). Nothing reads a tensor value on the host, so on a GPU the call queues kernels
and returns without a sync.

The draw is the exponential race: ``argmax(p / E)`` with ``E ~ Exponential(1)`` picks token
i with probability ``p_i / sum(p)``, so the weights need no normalizing, and each row's noise
can come from its own generator while the race itself stays one batched ``argmax``. A seeded
row draws one noise value per vocabulary entry and looks it up by token id, so its tokens
depend only on its own seed, logits and parameters, not on the other rows of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from chatstream.core import GenerationParams

__all__ = ["BatchSampler", "make_generator", "to_device"]

_Generators = Sequence[torch.Generator | None]

_TINY = torch.finfo(torch.float32).tiny


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A random generator on ``device`` seeded with ``seed``, for one request's draws."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class BatchSampler:
    """Samples one token per row of a batch of logits, each row with its own parameters.

    The sampler holds no state: build one and reuse it for every step.
    """

    __slots__ = ()

    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[GenerationParams],
        *,
        seen: torch.Tensor | None = None,
        generators: _Generators | None = None,
    ) -> torch.Tensor:
        """Pick the next token of every row.

        Per row, in this order: the repetition penalty (once per distinct token marked in
        ``seen``: multiplicative divides a positive logit and multiplies a non-positive one,
        subtractive subtracts), then argmax if the row is greedy, else temperature, top-k,
        top-p (the kept tokens keep their relative probabilities) and a random draw.

        Args:
            logits: ``[B, V]`` next-token logits, any float dtype; it is not modified. The
                work is done in float32.
            params: the sampling parameters of each of the B rows.
            seen: optional ``[B, V]`` bool mask of the tokens already in each row's
                sequence (prompt and reply). Without it no penalty is applied.
            generators: optional generator of each row (None: the default generator of
                the device). A seeded row gives the same tokens for the same logits
                whatever the other rows of the batch are.

        Returns:
            A ``[B]`` int64 tensor of token ids, on the device of ``logits``.

        Raises:
            ValueError: the shapes of ``logits``, ``params``, ``seen`` or ``generators``
                do not agree.
        """
        if logits.dim() != 2:
            raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
        batch, vocab = logits.shape
        if len(params) != batch:
            raise ValueError(f"got {len(params)} params for {batch} rows of logits")
        if generators is not None and len(generators) != batch:
            raise ValueError(f"got {len(generators)} generators for {batch} rows of logits")
        if seen is not None and (seen.shape != logits.shape or seen.dtype != torch.bool):
            raise ValueError(
                f"seen must be a bool tensor of shape {tuple(logits.shape)}, "
                f"got {seen.dtype} {tuple(seen.shape)}"
            )
        gens: _Generators = generators if generators is not None else [None] * batch

        penalize = seen is not None and any(p.repetition_penalty is not None for p in params)
        if not penalize and all(p.greedy for p in params):
            # The most common fast path: no float copy, one kernel.
            return logits.argmax(dim=-1)
        scores = logits.float()  # a new tensor unless already float32: never written to
        if seen is not None and penalize:
            scores = _penalize(scores, params, seen)

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
                (top_p, _draw_window),
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
    return _race(weights, generators, None, scores.shape[-1])


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
