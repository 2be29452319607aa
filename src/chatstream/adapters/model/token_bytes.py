"""The exact bytes of one token, for log-probabilities (OpenAI's ``bytes`` field).

Decoding a single token of a byte-level tokenizer loses what is not a whole character (half
of a UTF-8 sequence decodes to U+FFFD); the token's own string maps back to its bytes through
the byte-to-character table of GPT-2's byte-level BPE, and SentencePiece's ``<0xAB>`` byte
tokens and ``▁`` spaces are read as they are written. Written here because tokenizers
exposes no per-token byte accessor.
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from typing import Any

__all__ = ["token_bytes"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's table, inverted: the printable characters standing for the bytes 0-255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return {char: byte for byte, char in table.items()}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return False
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders") or ()}
    return "ByteLevel" in kinds


#: Whether each tokenizer seen is byte-level (asked once: it parses the tokenizer's JSON).
_BYTE_LEVEL: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def token_bytes(tokenizer: Any, token_id: int) -> bytes | None:
    """The bytes ``token_id`` stands for, or None when the tokenizer cannot say."""
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    piece = convert(token_id) if callable(convert) else None
    if not isinstance(piece, str):
        return None
    byte = _BYTE_TOKEN.fullmatch(piece)
    if byte is not None:
        return bytes([int(byte.group(1), 16)])
    byte_level = _BYTE_LEVEL.get(tokenizer)
    if byte_level is None:
        byte_level = _BYTE_LEVEL[tokenizer] = _is_byte_level(tokenizer)
    if byte_level:
        decoder = _byte_decoder()
        if all(char in decoder for char in piece):
            return bytes(decoder[char] for char in piece)
    return piece.replace("▁", " ").encode()
