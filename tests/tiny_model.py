"""A real, tiny, randomly initialised causal LM and its tokenizer, built offline.

A byte-level BPE (so Japanese and emoji split across tokens) wrapped as a transformers fast
tokenizer with a ChatML chat template, and a 2-layer Llama with random weights, saved with
``save_pretrained`` and loaded back with the ``Auto*`` classes, as a user's model would be.
Building takes about a second.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .core.bpe import SPECIAL_TOKENS, corpus

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_llama_config(*, vocab_size: int, **options: Any) -> transformers.LlamaConfig:
    """The shape of the test model: a 2-layer Llama, hidden 64, 4 heads over 2 KV heads."""
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        **options,
    )


def build_tiny_model(
    directory: pathlib.Path, *, seed: int = 0, max_positions: int = 512
) -> pathlib.Path:
    """Save a tokenizer and a random Llama of ``max_positions`` into ``directory``; return it."""
    transformers.utils.logging.disable_progress_bar()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|eos|>"],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_positions,
    )
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Larger than the default so that greedy output of random weights varies.
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def load_tiny_model(directory: pathlib.Path) -> tuple[object, object]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    model.eval()
    return model, tokenizer
