"""Loading a HuggingFace model and tokenizer onto one device or across several GPUs.

``load_model(path, device="cuda", num_gpus=2)`` spreads the layers over two GPUs with
``device_map`` (each GPU filled up to ``max_gpu_memory``, or 85% of what is free), which is how
a model too big for one GPU is served. For *copies* of a model on several GPUs behind one
queue, load one per device and pass the list to ``ChatStream(model=[...], device=[...])``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from chatstream.progress import LoadProgress

__all__ = ["load_model", "placement"]

#: Share of each GPU's free memory a multi-GPU load may fill when no limit is given.
_GPU_FILL = 0.85


def placement(
    device: str,
    *,
    num_gpus: int | None = None,
    max_gpu_memory: str | None = None,
    free_gpu_memory: Sequence[int] = (),
    dtype: Any = "auto",
) -> dict[str, Any]:
    """The ``from_pretrained`` keywords that put a model where it should go.

    Args:
        device: "cpu", "cuda", "cuda:N" or "mps".
        num_gpus: GPUs to spread the layers over (cuda only); None or 1: one device.
        max_gpu_memory: per-GPU limit such as "20GiB"; default 85% of the free memory.
        free_gpu_memory: free bytes per GPU (from ``torch.cuda.mem_get_info``).
        dtype: a torch dtype, or "auto": float16 on cuda and mps, float32 on cpu.
    """
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    options: dict[str, Any] = {}
    if dtype == "auto":
        import torch

        dtype = torch.float32 if kind == "cpu" else torch.float16
    options["dtype"] = dtype
    if kind == "cuda" and num_gpus is not None and num_gpus > 1:
        if len(free_gpu_memory) < num_gpus:
            raise ValueError(f"asked for {num_gpus} GPUs, found {len(free_gpu_memory)}")
        options["device_map"] = "sequential" if max_gpu_memory else "auto"
        options["max_memory"] = {
            index: max_gpu_memory or f"{int(free_gpu_memory[index] * _GPU_FILL / 2**20)}MiB"
            for index in range(num_gpus)
        }
    return options


def load_model(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    num_gpus: int | None = None,
    max_gpu_memory: str | None = None,
    dtype: Any = "auto",
    gguf_file: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    tokenizer_options: Mapping[str, Any] | None = None,
    name: str | None = None,
    stream: IO[str] | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local folder (or a GGUF file in it), in eval mode,
    with a progress bar (estimated from the previous load of the same model).

    Nothing is downloaded: set ``HF_HUB_OFFLINE=1`` or give a local path.
    """
    label = name or Path(path).name
    with LoadProgress(f"Loading {label}", key=f"load:{Path(path).resolve()}", stream=stream):
        return _load(
            path,
            device=device,
            num_gpus=num_gpus,
            max_gpu_memory=max_gpu_memory,
            dtype=dtype,
            gguf_file=gguf_file,
            model_options=model_options,
            tokenizer_options=tokenizer_options,
        )


def _load(
    path: str | os.PathLike[str],
    *,
    device: str,
    num_gpus: int | None,
    max_gpu_memory: str | None,
    dtype: Any,
    gguf_file: str | None,
    model_options: Mapping[str, Any] | None,
    tokenizer_options: Mapping[str, Any] | None,
) -> tuple[Any, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    free: list[int] = []
    if device.startswith("cuda") and num_gpus is not None and num_gpus > 1:
        free = [int(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())]
    options = placement(
        device, num_gpus=num_gpus, max_gpu_memory=max_gpu_memory, free_gpu_memory=free, dtype=dtype
    )
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **extra, **dict(tokenizer_options or {}))
    model: Any = AutoModelForCausalLM.from_pretrained(
        path, **extra, **options, **dict(model_options or {})
    )
    if "device_map" not in options:
        model.to(device)
    model.eval()
    return model, tokenizer
