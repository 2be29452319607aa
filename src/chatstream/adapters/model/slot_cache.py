"""A static, per-slot KV cache that HuggingFace models accept as their ``cache``.

Every running request owns one row (its slot) of a preallocated ``[slots, heads, length,
dim]`` buffer per layer. A request joining or leaving the batch moves no other row's memory,
each row writes at its own position, and the model attends through a 4D mask that the backend
builds, so rows of different lengths decode together in one forward.

Column 0 of every row is scratch: padding rows (free slots inside the decoded range) write
there and attend only there, so they never touch a real sequence and never produce NaN.
Token position ``p`` lives in column ``p + 1``.

Transformers calls ``update(key, value, layer_idx, ...)`` from each attention layer; its
signature changed across 5.x (``cache_kwargs`` vs ``kwargs``), so extra arguments are
accepted and ignored. Buffers are allocated on the first write of each layer, on the device
and in the dtype of that layer's keys, which makes models split over several GPUs work.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SCRATCH_COLUMN", "SlotKVCache"]

SCRATCH_COLUMN = 0


class SlotKVCache:
    """Per-slot KV buffers plus the write plan of the forward pass in progress."""

    is_compileable = False

    def __init__(self, *, num_layers: int, num_slots: int, max_positions: int) -> None:
        self.num_slots = num_slots
        self.max_positions = max_positions
        self._keys: list[torch.Tensor | None] = [None] * num_layers
        self._values: list[torch.Tensor | None] = [None] * num_layers
        self._rows: slice | list[int] = slice(0, 0)
        self._columns: torch.Tensor | None = None
        self._kv_columns = 0

    def plan_write(self, rows: slice | list[int], columns: torch.Tensor, kv_columns: int) -> None:
        """Set where the next forward writes and how much it reads.

        Args:
            rows: the slots of the batch: a contiguous range (batch row i is slot
                ``rows.start + i``, read in place), or a list of slots (read as a copy: for
                prefills, whose reads are short).
            columns: ``[batch, query_len]`` column of each new token.
            kv_columns: columns the attention reads (from 0); the mask covers exactly these.
        """
        self._rows = rows
        self._columns = columns
        self._kv_columns = kv_columns

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self._buffer(self._keys, layer_idx, key_states)
        values = self._buffer(self._values, layer_idx, value_states)
        assert self._columns is not None
        # [batch, query] -> [batch, heads, query, dim], the shape scatter_ wants.
        index = self._columns.to(key_states.device)[:, None, :, None].expand_as(key_states)
        if isinstance(self._rows, slice):
            row_keys = keys[self._rows]
            row_values = values[self._rows]
            row_keys.scatter_(2, index, key_states)
            row_values.scatter_(2, index, value_states)
            return row_keys[:, :, : self._kv_columns], row_values[:, :, : self._kv_columns]
        read_keys, read_values = [], []
        for i, row in enumerate(self._rows):
            row_keys = keys[row : row + 1]
            row_values = values[row : row + 1]
            row_keys.scatter_(2, index[i : i + 1], key_states[i : i + 1])
            row_values.scatter_(2, index[i : i + 1], value_states[i : i + 1])
            read_keys.append(row_keys[:, :, : self._kv_columns])
            read_values.append(row_values[:, :, : self._kv_columns])
        return torch.cat(read_keys), torch.cat(read_values)

    def _buffer(
        self, buffers: list[torch.Tensor | None], layer_idx: int, states: torch.Tensor
    ) -> torch.Tensor:
        buffer = buffers[layer_idx]
        if buffer is None:
            _, heads, _, dim = states.shape
            buffer = torch.zeros(
                (self.num_slots, heads, self.max_positions + 1, dim),
                dtype=states.dtype,
                device=states.device,
            )
            buffers[layer_idx] = buffer
        return buffer

    def save(self, slot: int, length: int) -> list[torch.Tensor]:
        """A host copy of the KV of a slot's positions ``0 .. length - 1``: per layer, keys
        then values, each ``[heads, length, dim]``."""
        copies = []
        for buffer in (*self._keys, *self._values):
            if buffer is None:
                raise RuntimeError("the cache holds nothing yet")
            part = buffer[slot, :, 1 : length + 1]
            copies.append(part.to("cpu", copy=True))
        return copies

    def restore(self, slot: int, copies: list[torch.Tensor], length: int) -> None:
        """Write the first ``length`` positions of a :meth:`save` copy back into a slot."""
        buffers = (*self._keys, *self._values)
        if len(copies) != len(buffers):
            raise RuntimeError("a saved prefix of another cache")
        for buffer, copy in zip(buffers, copies, strict=True):
            if buffer is None:
                raise RuntimeError("the cache holds nothing yet")
            buffer[slot, :, 1 : length + 1].copy_(copy[:, :length], non_blocking=True)

    def copy(self, source: int, target: int, length: int) -> None:
        """Copy positions ``0 .. length - 1`` of slot ``source`` into slot ``target``."""
        for buffer in (*self._keys, *self._values):
            if buffer is None:
                raise RuntimeError("the cache holds nothing yet")
            buffer[target, :, 1 : length + 1].copy_(buffer[source, :, 1 : length + 1])

    # What transformers may ask of a cache besides update(); answers for the read window.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self._kv_columns - 1, 0)

    def get_max_length(self) -> int:
        return self.max_positions

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def allocated_bytes(self) -> int:
        """Bytes held by the buffers allocated so far."""
        return sum(
            b.numel() * b.element_size() for b in (*self._keys, *self._values) if b is not None
        )
