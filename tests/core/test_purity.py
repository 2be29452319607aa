"""The core is sans-IO: standard library only, and no I/O, clock, threads or async."""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import chatstream.core

CORE = pathlib.Path(chatstream.core.__file__).parent
FORBIDDEN = {
    "anyio",
    "trio",
    "asyncio",
    "threading",
    "torch",
    "transformers",
    "tokenizers",
    "starlette",
    "numpy",
    # No clock, no I/O, no randomness in the core: time and ids are inputs.
    "time",
    "socket",
    "random",
    "uuid",
    "os",
    "logging",
}


def test_importing_the_core_loads_nothing_forbidden() -> None:
    # A fresh interpreter: this test process has imported half the world already.
    code = (
        "import sys, json; before = set(sys.modules); import chatstream.core; "
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(result.stdout))
    heavy = {"anyio", "trio", "asyncio", "threading", "torch", "transformers", "starlette"}
    assert not loaded & heavy, loaded & heavy
    assert "chatstream" in loaded


def test_importing_the_package_is_lazy() -> None:
    # `import chatstream` must not pull in the adapters and their dependencies.
    code = (
        "import sys, json; import chatstream; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('anyio', 'trio', 'torch', 'transformers', 'starlette', 'threading', 'asyncio'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


def imported_modules(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_core_module_names_a_forbidden_module() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 9
    offenders = {
        path.name: sorted(imported_modules(path) & FORBIDDEN)
        for path in modules
        if imported_modules(path) & FORBIDDEN
    }
    assert offenders == {}


def test_core_imports_only_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    for path in CORE.glob("*.py"):
        assert imported_modules(path) <= allowed, path.name
