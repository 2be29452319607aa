"""Log messages in English and Japanese (the ``locale`` option)."""

from __future__ import annotations

import os
from typing import Final, Literal

__all__ = ["Locale", "resolve_locale", "text"]

Locale = Literal["en", "ja"]

_MESSAGES: Final[dict[str, dict[Locale, str]]] = {
    "loading": {
        "en": "starting the model thread for {name}",
        "ja": "{name} のモデルスレッドを起動しています",
    },
    "ready": {
        "en": "ready: {name}, {slots} concurrent generations, {waiting} waiting places, "
        "context {context} tokens",
        "ja": "準備完了: {name}、同時生成数 {slots}、待ち行列 {waiting}、"
        "コンテキスト {context} トークン",
    },
    "quantized_int8": {
        "en": "int8 weights and activations: {layers} linear layers, {smoothed} decoder layers "
        "smoothed, {bits}-bit activations",
        "ja": "int8 の重みと活性化: 線形層 {layers}、平滑化したデコーダ層 {smoothed}、"
        "活性化 {bits} ビット",
    },
    "quantized_bf16": {
        "en": "bfloat16 weights",
        "ja": "bfloat16 の重み",
    },
    "context_clamped": {
        "en": "context_len {asked} exceeds what the model supports; using {used}",
        "ja": "context_len {asked} はモデルの上限を超えているため {used} を使います",
    },
    "rejected": {
        "en": "request rejected ({reason}): {running}/{capacity} generating, "
        "{waiting}/{max_waiting} waiting",
        "ja": "リクエストを拒否しました ({reason}): 生成中 {running}/{capacity}、"
        "待機中 {waiting}/{max_waiting}",
    },
    "rejected_since": {
        "en": "{count} more requests rejected in the last {seconds:.0f} s",
        "ja": "直近 {seconds:.0f} 秒にさらに {count} 件のリクエストを拒否しました",
    },
    "stopped": {
        "en": "stopped: {finished} replies finished, {cancelled} cancelled, {rejected} rejected",
        "ja": "停止しました: 完了 {finished}、キャンセル {cancelled}、拒否 {rejected}",
    },
}


def resolve_locale(locale: str | None) -> Locale:
    """ "ja", "ja_JP", "ja-JP.UTF-8" and the like are Japanese; anything else is English.

    None reads the process locale from ``LC_ALL``, ``LC_MESSAGES`` or ``LANG``.
    """
    if locale is None:
        locale = next(
            (os.environ[k] for k in ("LC_ALL", "LC_MESSAGES", "LANG") if os.environ.get(k)), ""
        )
    return "ja" if locale.lower().startswith(("ja", "japanese")) else "en"


def text(locale: Locale, key: str, **values: object) -> str:
    return _MESSAGES[key][locale].format(**values)
