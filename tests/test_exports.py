"""Every public name resolves, and the core re-exports what its modules define."""

from __future__ import annotations

import importlib

import pytest

import chatstream
import chatstream.core

CORE_MODULES = [
    "admission",
    "config",
    "conversation",
    "conversations",
    "decoding",
    "engine",
    "errors",
    "events",
    "isolation",
    "prefix_cache",
    "prompts",
    "roles",
    "scheduler",
]


@pytest.mark.parametrize("package", [chatstream, chatstream.core])
def test_all_names_resolve(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    assert names == sorted(set(names), key=names.index), "duplicates in __all__"
    for name in names:
        assert getattr(package, name) is not None


@pytest.mark.parametrize("module_name", CORE_MODULES)
def test_core_reexports_module_api(module_name: str) -> None:
    module = importlib.import_module(f"chatstream.core.{module_name}")
    missing = [n for n in module.__all__ if n not in chatstream.core.__all__]
    assert missing == []
    for name in module.__all__:
        assert getattr(chatstream.core, name) is getattr(module, name)
