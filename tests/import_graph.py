"""The import graph of ``src/chatstream``, read from the source (nothing is imported).

Every ``import`` and ``from ... import`` counts, also inside functions; those under
``if TYPE_CHECKING:`` are kept apart (they never run). A string constant that names one of
the package's modules counts as an import too: that is how lazy import tables
(``importlib.import_module(table[name])``) and ``importlib.resources.files(...)`` spell
them. Importing ``a.b.c`` also initializes the packages ``a`` and ``a.b``; Python handles
that parent-first, so it is not an edge here.

Used by ``tests/test_architecture.py`` (no cycles, layers one way) and by
``docs/make_architecture_diagram.py`` (the generated part of ``docs/architecture.md``).
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src"
PACKAGE = "chatstream"


@dataclass(frozen=True, slots=True)
class Edge:
    """``source`` imports ``target`` (both module names) at ``line``."""

    source: str
    target: str
    line: int
    #: Under ``if TYPE_CHECKING:``: for annotations only, never run.
    type_checking: bool
    #: Inside a function body: run on first call rather than at import.
    in_function: bool


def module_files(source: pathlib.Path = SOURCE) -> dict[str, pathlib.Path]:
    """Every module of the package by name (``a/__init__.py`` is the package ``a``)."""
    files: dict[str, pathlib.Path] = {}
    for path in sorted((source / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(source).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of a (possibly relative) ``from`` import."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


#: (target, line, type_checking, in_function)
_Found = tuple[str, int, bool, bool]


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[_Found]:
    """Each import in ``tree``, with where it sits."""

    def visit(node: ast.AST, type_checking: bool, in_function: bool) -> Iterator[_Found]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, type_checking, in_function
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in known else base
                yield target, node.lineno, type_checking, in_function
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            # Dotted names only: the bare package name is also the logger's and the owner's.
            and "." in node.value
            and node.value in known
            and node.value != module
        ):
            yield node.value, node.lineno, type_checking, in_function
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.body:
                yield from visit(statement, True, in_function)
            for statement in node.orelse:
                yield from visit(statement, type_checking, in_function)
            return
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, type_checking, inner)

    yield from visit(tree, False, False)


def import_edges(source: pathlib.Path = SOURCE) -> list[Edge]:
    """Every import from one module of the package to another."""
    files = module_files(source)
    known = set(files)
    edges: list[Edge] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for target, line, type_checking, in_function in _imports(tree, module, is_package, known):
            if target in known and target != module:
                edges.append(Edge(module, target, line, type_checking, in_function))
    return edges


def cycles(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {node: set() for node in nodes}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


# ---------------------------------------------------------------------- components and layers

#: The package's components, lowest layer first: a module may import its own component and
#: the ones listed before it, never one after it. Each entry: (component, layer, prefixes).
COMPONENTS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("core", 0, ("chatstream.core",)),
    ("support", 1, ("chatstream.progress", "chatstream.log_messages", "chatstream.web")),
    ("adapters.model", 2, ("chatstream.adapters.model",)),
    ("adapters.driver", 3, ("chatstream.adapters.driver",)),
    ("adapters.turn", 3, ("chatstream.adapters.turn",)),
    ("adapters.service", 3, ("chatstream.adapters.service",)),
    ("adapters.http", 4, ("chatstream.adapters.http",)),
    (
        "adapters (kept paths)",
        5,
        (
            "chatstream.adapters.starlette",
            "chatstream.adapters.sessions",
            "chatstream.adapters.loading",
            "chatstream.adapters",
        ),
    ),
    ("facade", 6, ("chatstream.chat_stream", "chatstream.chat_stream_http")),
    (
        "entry points",
        7,
        (
            "chatstream.cli",
            "chatstream.server",
            "chatstream.console",
            "chatstream.embedded",
            "chatstream.__main__",
            "chatstream",
        ),
    ),
)


def component_of(module: str) -> tuple[str, int]:
    """The component of a module and its layer (the longest matching prefix wins)."""
    best: tuple[int, str, int] | None = None
    for name, layer, prefixes in COMPONENTS:
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name, layer)
    if best is None:
        raise LookupError(f"{module} belongs to no component: add it to COMPONENTS")
    return best[1], best[2]
