"""Decode attention split by sequence length.

The rows of a decode step attend over the static per-slot cache up to the longest row's length:
one 1,500-token conversation among seven 100-token ones makes all eight read 1,500 columns of
keys and values in every layer. When the lengths differ that much, the step splits its rows into
a long and a short group and each group attends over its own columns only (1 × 1,500 + 7 × 100
here). On SmolLM2 on one CPU core that step took 149 ms in one group and 108 ms in two; eight
rows of 100 took 100 ms.

Transformers picks the attention function of every layer by the name in
``config._attn_implementation``. This module registers one more, ``chatstream_split``, that
calls the model's own SDPA function once per group; the backend switches the model to it for
the decode forwards it splits (:func:`split_attention`) and back right after. Only models on
``sdpa`` (transformers' default) are split; the rest attend as before.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RowGroup", "plan_split", "split_attention", "splittable"]

SPLIT_ATTENTION = "chatstream_split"

#: At least this share of the columns read must go for a split to be worth a second call.
MIN_SAVING = 0.25
#: ... and at least this many row-columns (a split of short rows saves less than it costs).
MIN_COLUMNS_SAVED = 1024


@dataclass(frozen=True, slots=True)
class RowGroup:
    """Rows of the batch (a range, or indices on the device) and the columns they read."""

    rows: slice | torch.Tensor
    columns: int


_Attention = Callable[..., tuple[torch.Tensor, Any]]
_active: contextvars.ContextVar[tuple[_Attention, tuple[RowGroup, ...]] | None] = (
    contextvars.ContextVar("chatstream_split_attention", default=None)
)


def plan_split(lengths: Sequence[int]) -> tuple[list[int], int, list[int], int] | None:
    """Split rows needing ``lengths[r]`` columns into a short and a long group when that reads
    markedly fewer columns than every row reading the longest length.

    Returns:
        ``(short rows, their columns, long rows, their columns)``, or None: no split.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[r] for r in order]
    if len(ordered) < 2:
        return None
    longest = ordered[-1]
    dense = len(ordered) * longest
    # Short rows: the first k in length order. The cost is what they read plus what the
    # long ones read; the best k is where the sum is smallest.
    best_cost, best_k = min(
        (k * ordered[k - 1] + (len(ordered) - k) * longest, k) for k in range(1, len(ordered))
    )
    saved = dense - best_cost
    if saved < MIN_SAVING * dense or saved < MIN_COLUMNS_SAVED:
        return None
    return order[:best_k], ordered[best_k - 1], order[best_k:], longest


def splittable(model: Any) -> bool:
    """True when the model attends through transformers' SDPA function, which this splits."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(
        config, "sub_configs", {}
    ):
        return False
    from transformers import AttentionInterface

    AttentionInterface.register(SPLIT_ATTENTION, _split_attention_forward)
    return True


@contextlib.contextmanager
def split_attention(model: Any, groups: tuple[RowGroup, ...]) -> Iterator[None]:
    """For the forwards in the block, each group of rows attends over its own columns.

    The model must be :func:`splittable`; its attention setting is restored on the way out.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = model.config
    base_name = config._attn_implementation
    base = ALL_ATTENTION_FUNCTIONS[base_name]
    token = _active.set((base, groups))
    config._attn_implementation = SPLIT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = base_name
        _active.reset(token)


def _split_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    active = _active.get()
    if active is None:  # the model was left switched over: attend as SDPA does
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["sdpa"](  # type: ignore[no-any-return]
            module, query, key, value, attention_mask, **kwargs
        )
    base, groups = active
    out: torch.Tensor | None = None
    for group in groups:
        rows, columns = group.rows, group.columns
        if isinstance(rows, slice):
            parts = [query[rows], key[rows, :, :columns], value[rows, :, :columns]]
            mask = None if attention_mask is None else attention_mask[rows, ..., :columns]
        else:
            # A model spread over several GPUs: the indices go where this layer runs.
            rows = rows.to(query.device, non_blocking=True)
            parts = [
                query.index_select(0, rows),
                key[:, :, :columns].index_select(0, rows),
                value[:, :, :columns].index_select(0, rows),
            ]
            mask = None
            if attention_mask is not None:
                mask = attention_mask[..., :columns].index_select(0, rows)
        result, _ = base(module, *parts, mask, **kwargs)
        if out is None:
            out = result.new_empty((query.shape[0], *result.shape[1:]))
        if isinstance(rows, slice):
            out[rows] = result
        else:
            out.index_copy_(0, rows, result)
    assert out is not None
    return out, None
