"""Model loading: placement keywords for one device or several GPUs, and a real load."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from chatstream.adapters.model.loading import load_model, placement


def test_placement_on_one_device() -> None:
    assert placement("cpu") == {"dtype": torch.float32}
    assert placement("cuda") == {"dtype": torch.float16}
    assert placement("mps", dtype=torch.bfloat16) == {"dtype": torch.bfloat16}
    assert placement("cuda:1", num_gpus=1) == {"dtype": torch.float16}


def test_placement_across_gpus() -> None:
    free = [40 * 2**30, 20 * 2**30]
    options = placement("cuda", num_gpus=2, free_gpu_memory=free)
    assert options["device_map"] == "auto"
    assert options["max_memory"] == {
        0: f"{int(40 * 1024 * 0.85)}MiB",
        1: f"{int(20 * 1024 * 0.85)}MiB",
    }
    limited = placement("cuda", num_gpus=2, max_gpu_memory="10GiB", free_gpu_memory=free)
    assert limited["device_map"] == "sequential"
    assert limited["max_memory"] == {0: "10GiB", 1: "10GiB"}
    with pytest.raises(ValueError, match="found 1"):
        placement("cuda", num_gpus=2, free_gpu_memory=free[:1])
    with pytest.raises(ValueError, match="device must be"):
        placement("tpu")


def test_load_model_from_a_local_folder(tiny_model_dir: pathlib.Path) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    loaded: Any = tokenizer
    assert loaded.chat_template
