"""Adapter tests run on both event loops, against a real tiny model where a model is needed."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from tests.tiny_model import build_tiny_model, load_tiny_model

# On a 2-core machine two OpenMP threads fight each other and every other process.
torch.set_num_threads(1)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: pathlib.Path) -> tuple[Any, Any]:
    """(model, tokenizer): shared by the tests, never modified by them."""
    return load_tiny_model(tiny_model_dir)
