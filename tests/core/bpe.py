"""A real byte-level BPE tokenizer, trained offline in a few milliseconds.

Byte-level BPE splits multi-byte characters (Japanese, emoji) across tokens, so decoding
one token at a time yields U+FFFD: exactly what the incremental decoder must handle.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>")

_EN = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "stream",
    "token",
    "chat",
    "model",
    "reply",
    "hello",
    "world",
    "async",
    "trio",
    "<NL>",
    "<human>",
    "<bot>",
]
_JA = ["こんにちは", "世界", "東京", "猫", "ありがとう", "日本語", "テスト", "です", "絵文字🙂"]


def corpus(seed: int = 0, lines: int = 200) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_EN) for _ in range(rng.randint(3, 10))]
        words += [rng.choice(_JA) for _ in range(rng.randint(1, 4))]
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


class BPETokenizer:
    """The :class:`chatstream.core.decoding.Detokenizer` protocol over a real BPE."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.special_ids = frozenset(tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, token_ids: Sequence[int], /) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        assert token_id is not None
        return int(token_id)


@functools.cache
def byte_level_bpe() -> BPETokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return BPETokenizer(tok)
