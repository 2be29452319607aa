"""The decode step replayed from CUDA graphs.

An eager decode step of a HuggingFace model spends most of its time on the host launching
kernels (about 29 ms a step on an H100 for a TinyLlama-shaped model, whatever the batch): a
CUDA graph records those launches once and replays them with one call. A graph replays fixed
shapes at fixed addresses, so :class:`DecodeGraphs` keeps

* **padded batch sizes** (:func:`padded_sizes`: 1, 2, 4, 8, then every multiple of 8 up to
  the slot count, and the slot count). A step whose highest decoding slot is ``n - 1`` runs
  the graph of the smallest size ``>= n`` over slots ``0 .. size - 1``; the rows that do not
  decode now (free slots, slots still prefilling, the padding) write to the scratch column of
  their own slot and attend only to what they saw before, as in the eager step;
* **column buckets** (:func:`column_buckets`: 256, 512, 1,024, ... and the cache's full
  width): the attention of a step reads the smallest bucket that holds its longest row, not the
  whole static cache, so a graph is kept per ``(size, bucket)``;
* **static buffers**: the step's token ids, positions and live flags (one ``[4, slots]`` tensor
  whose first ``size`` columns each graph reads) and the logits (one ``[slots, vocab]`` tensor
  whose first ``size`` rows each graph writes). A step copies its inputs in, replays, and reads
  the logits out; nothing is reallocated between capture and replay.

Each graph is captured the first time a step needs it (the KV buffers exist by then: they are
allocated by the first prefill), all in one memory pool, and kept for the life of the backend.
What is captured is the forward only: the sampler (per-request parameters, seeded generators,
grammar masks built on the host, penalties) stays eager after it.

The CUDA calls go through one narrow seam, a :class:`Capturer`: :class:`CudaCapturer` on a GPU;
on the CPU, :class:`RerunCapturer` runs the recorded function again at every "replay" on the
same static buffers, which tests everything around the graph (the padding, the buffers, the
fall-back) without a GPU. A capture that fails for any reason is logged once and the backend
decodes eagerly from then on.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import torch

__all__ = [
    "Capturer",
    "CudaCapturer",
    "DecodeGraphs",
    "Graph",
    "GraphOption",
    "RerunCapturer",
    "capturer_for",
    "column_buckets",
    "pad_to",
    "padded_sizes",
]

logger = logging.getLogger("chatstream")

#: ``True``: graphs on a CUDA device; ``False``: never; ``"auto"``: as True.
GraphOption = bool | Literal["auto"]

#: The narrowest attention window a graph is captured for.
SMALLEST_BUCKET = 256
#: Eager runs of a function before its capture (kernels chosen, lazy state built).
WARMUP_RUNS = 2


def padded_sizes(num_slots: int) -> tuple[int, ...]:
    """The batch sizes graphs are captured for: 1, 2, 4, 8, then multiples of 8, up to and
    including ``num_slots``."""
    if num_slots < 1:
        return ()
    sizes = {s for s in (1, 2, 4, 8) if s <= num_slots}
    sizes.update(range(16, num_slots + 1, 8))
    sizes.add(num_slots)
    return tuple(sorted(sizes))


def pad_to(n: int, sizes: Sequence[int]) -> int | None:
    """The smallest of ``sizes`` (ascending) that holds ``n`` rows, or None: none does."""
    index = bisect.bisect_left(sizes, n)
    return sizes[index] if index < len(sizes) else None


def column_buckets(max_columns: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """Attention widths graphs are captured for: powers of two from ``smallest`` below
    ``max_columns``, then ``max_columns`` (the cache's full width)."""
    buckets = []
    width = smallest
    while width < max_columns:
        buckets.append(width)
        width *= 2
    buckets.append(max_columns)
    return tuple(buckets)


class Graph(Protocol):
    """A captured step: :meth:`replay` runs it again on the same buffers."""

    def replay(self) -> None: ...


class Capturer(Protocol):
    """Records a function that reads and writes only long-lived buffers."""

    def capture(self, function: Callable[[], None]) -> Graph: ...


class CudaCapturer:
    """CUDA graphs: a few eager runs on a side stream, then the capture, in one shared pool
    (a graph's temporaries are reused by the next: only one runs at a time)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool: Any = None

    def capture(self, function: Callable[[], None]) -> Graph:
        cuda = torch.cuda
        if self._pool is None:
            self._pool = cuda.graph_pool_handle()
        current = cuda.current_stream(self.device)
        side = cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        side.wait_stream(current)
        with cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                function()
        current.wait_stream(side)
        graph = cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (another replica's model thread, a
        # /get_resource_usage) go on during the capture instead of failing it or themselves.
        with cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            function()
        cuda.current_stream(self.device).synchronize()
        return graph


class _Rerun:
    def __init__(self, function: Callable[[], None]) -> None:
        self.function = function

    def replay(self) -> None:
        self.function()


class RerunCapturer:
    """The CPU's stand-in for CUDA graphs: "capture" runs the function once (as the warm-up
    does) and every replay runs it again. Inputs must go through the static buffers for a
    replay to see them, as with a real graph."""

    def __init__(self) -> None:
        self.captured = 0

    def capture(self, function: Callable[[], None]) -> Graph:
        function()
        self.captured += 1
        return _Rerun(function)


def capturer_for(option: GraphOption, device: torch.device) -> Capturer | None:
    """The capturer for ``option`` on ``device``: CUDA graphs on a CUDA device unless the
    option is False; None (eager) anywhere else."""
    if option is False:
        return None
    if device.type != "cuda":
        if option is True:
            logger.info("CUDA graphs need a CUDA device; %s decodes eagerly", device)
        return None
    return CudaCapturer(device)


#: ``forward(inputs, columns)``: the logits ``[size, vocab]`` of the decode step whose token
#: ids, positions and live flags are the rows of ``inputs`` (``[3, size]``), reading
#: ``columns`` columns of the KV cache.
StepForward = Callable[[torch.Tensor, int], torch.Tensor]


class DecodeGraphs:
    """One graph per padded batch size and attention width, captured on first use.

    Args:
        capturer: how graphs are made (:func:`capturer_for`, or a test's stand-in).
        forward: the backend's decode forward (:data:`StepForward`); it must read its
            inputs only from the tensor it is given and the backend's long-lived state.
        num_slots: the KV cache's slots; batch row ``i`` of every graph is slot ``i``.
        max_columns: the KV cache's full width (positions + the scratch column).
        device: where the static buffers live.
    """

    def __init__(
        self,
        capturer: Capturer,
        forward: StepForward,
        *,
        num_slots: int,
        max_columns: int,
        device: torch.device,
    ) -> None:
        self._capturer = capturer
        self._forward = forward
        self.sizes = padded_sizes(num_slots)
        self.buckets = column_buckets(max_columns)
        self._graphs: dict[tuple[int, int], Graph] = {}
        # Token ids, positions, live flags (what the graphs read), and the slots to return.
        self._inputs = torch.zeros((4, num_slots), dtype=torch.long, device=device)
        self._logits: torch.Tensor | None = None
        self._pinned = device.type == "cuda"
        #: False after a failed capture: every step is eager from then on.
        self.enabled = True

    @property
    def captured(self) -> tuple[tuple[int, int], ...]:
        """``(size, columns)`` of every graph captured so far."""
        return tuple(sorted(self._graphs))

    def run(
        self, tokens: Sequence[int], positions: Sequence[int], order: Sequence[int]
    ) -> torch.Tensor | None:
        """The logits of one decode step from a graph, or None: the caller runs it eagerly
        (graphs are off after a failed capture, which is logged once).

        Args:
            tokens: slot ``s``'s input token at ``tokens[s]``, for slots ``0 .. n - 1``.
            positions: slot ``s``'s position; negative: the slot does not decode now.
            order: the slots whose logits to return, in this order.

        Returns:
            ``[len(order), vocab]``, a copy (the graphs' output buffer is reused).
        """
        if not self.enabled:
            return None
        size = pad_to(len(tokens), self.sizes)
        columns = pad_to(max(positions) + 2, self.buckets)
        if size is None or columns is None:
            return None
        pad = [0] * (size - len(tokens))
        host = torch.tensor(
            [
                [*tokens, *pad],
                [*(max(p, 0) for p in positions), *pad],
                [*(int(p >= 0) for p in positions), *pad],
                [*order, *[0] * (size - len(order))],
            ],
            dtype=torch.long,
            pin_memory=self._pinned,
        )
        inputs = self._inputs[:, :size]
        inputs.copy_(host, non_blocking=True)  # one transfer
        graph = self._graphs.get((size, columns))
        if graph is None:
            graph = self._capture(size, columns)
            if graph is None:
                return None
        graph.replay()
        assert self._logits is not None
        return self._logits.index_select(0, inputs[3, : len(order)])

    def _capture(self, size: int, columns: int) -> Graph | None:
        inputs = self._inputs[:3, :size]
        try:
            if self._logits is None:
                # Sized by an eager run of the step (same inputs: its writes are the
                # replay's), outside any graph's pool.
                probe = self._forward(inputs, columns)
                self._logits = probe.new_empty((self._inputs.shape[1], probe.shape[-1]))
            logits = self._logits[:size]

            def step() -> None:
                logits.copy_(self._forward(inputs, columns))

            graph = self._capturer.capture(step)
        except Exception as error:
            self.enabled = False
            logger.warning(
                "capturing the decode step in a CUDA graph (batch %d, %d columns) failed: "
                "decoding eagerly from now on",
                size,
                columns,
                exc_info=error,
            )
            return None
        self._graphs[(size, columns)] = graph
        return graph

    def close(self) -> None:
        """Drop the graphs and their buffers."""
        self._graphs.clear()
        self._logits = None
        self.enabled = False
