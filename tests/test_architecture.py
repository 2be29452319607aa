"""The package's architecture, checked from the source: no import cycle anywhere (imports
inside functions included), layers that only import downwards, and an HTTP side that never
imports the facade."""

from __future__ import annotations

import pathlib

import pytest

from tests.import_graph import (
    COMPONENTS,
    Edge,
    component_of,
    cycles,
    import_edges,
    module_files,
)

FACADE_MODULES = {"chatstream", "chatstream.chat_stream", "chatstream.chat_stream_http"}


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges()


def _where(edge: Edge) -> str:
    kind = "type-checking" if edge.type_checking else "in a function" if edge.in_function else ""
    return f"{edge.source}:{edge.line} imports {edge.target} {kind}".rstrip()


def test_the_graph_sees_every_kind_of_import(edges: list[Edge]) -> None:
    # The checks below mean something only if the reader finds these (all known to exist).
    found = {(e.source, e.target, e.type_checking, e.in_function) for e in edges}
    assert ("chatstream.adapters.turn", "chatstream.adapters.driver", False, False) in found
    # A relative import from a parent package, inside a function.
    assert (
        "chatstream.chat_stream_http",
        "chatstream.adapters.http.original_api",
        False,
        True,
    ) in found
    # Under `if TYPE_CHECKING:`.
    assert ("chatstream.chat_stream", "chatstream.adapters.service", True, False) in found
    # A lazy import table: a string naming a module.
    assert ("chatstream", "chatstream.chat_stream", False, False) in found


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles("abcd", [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]
    assert cycles("ab", [("a", "b")]) == []


def test_no_import_cycle(edges: list[Edge]) -> None:
    runtime = [(e.source, e.target) for e in edges if not e.type_checking]
    assert cycles(module_files(), runtime) == []


def test_http_never_imports_the_facade(edges: list[Edge]) -> None:
    # Not even for annotations: the HTTP side is typed against adapters.service.ChatService.
    wrong = [
        _where(e)
        for e in edges
        if e.source.startswith("chatstream.adapters.http") and e.target in FACADE_MODULES
    ]
    assert wrong == []


def test_nothing_below_the_facade_imports_it(edges: list[Edge]) -> None:
    _, facade_layer = component_of("chatstream.chat_stream")
    wrong = [
        _where(e)
        for e in edges
        if e.target in FACADE_MODULES and component_of(e.source)[1] < facade_layer
    ]
    assert wrong == []


def test_layers_import_only_downwards(edges: list[Edge]) -> None:
    wrong = [_where(e) for e in edges if component_of(e.target)[1] > component_of(e.source)[1]]
    assert wrong == []


def test_model_and_http_do_not_know_each_other(edges: list[Edge]) -> None:
    jobs = {"adapters.model", "adapters.http"}
    wrong = [
        _where(e) for e in edges if {component_of(e.source)[0], component_of(e.target)[0]} == jobs
    ]
    assert wrong == []


def test_every_module_has_a_component() -> None:
    for module in module_files():
        component_of(module)  # raises for a module nobody placed
    names = [name for name, _, _ in COMPONENTS]
    assert len(names) == len(set(names))


def test_the_adapters_root_holds_only_what_joins_the_jobs() -> None:
    root = pathlib.Path(module_files()["chatstream.adapters"]).parent
    loose = sorted(p.name for p in root.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 8, loose
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").exists())
    assert packages == ["http", "model"]
