"""The adapter pages cannot rot: their examples run and print what the pages say they print.

In ``docs/chatstream.md``, ``docs/engine.md`` and ``docs/trio.md``:

* a ``python`` block whose first line is ``# test: run`` is a complete program. It runs in a
  fresh interpreter with warnings as errors. One that calls ``anyio.run(main)`` without naming
  a backend runs twice, with AnyIO's default backend set to asyncio, then to trio;
* a ``# test: app`` block defines a Starlette ``app``; every route of it is requested through
  Starlette's ``TestClient``, on asyncio and on trio, and must answer 200 with the body printed;
* when a ``text`` block follows either, the output must be exactly that text.

The options table must list every parameter of ``ChatStream(...)`` in order with its default,
and every relative link must lead to a page and heading that exist.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

from chatstream import ChatStream

DOCS = pathlib.Path(__file__).parent.parent / "docs"
PAGES = ("chatstream.md", "engine.md", "trio.md", "prompts.md", "getting-started.md")

_BLOCK = re.compile(r"```python\n(?P<code>.*?)```(?:\n\s*```text\n(?P<output>.*?)```)?", re.S)
_DEFAULT_BACKEND = re.compile(r"\banyio\.run\(main\)")

# Runs a program file as __main__; "asyncio"/"trio" become anyio.run's default backend.
_RUN = """
import functools, runpy, sys
import anyio
path, backend = sys.argv[1:]
if backend != "as-written":
    anyio.run = functools.partial(anyio.run, backend=backend)
runpy.run_path(path, run_name="__main__")
"""

# Serves a file's `app` through TestClient and prints the body of every route.
_SERVE = """
import runpy, sys
from starlette.routing import Route
from starlette.testclient import TestClient
path, backend = sys.argv[1:]
app = runpy.run_path(path, run_name="docs_example")["app"]
with TestClient(app, backend=backend) as client:
    for route in app.routes:
        if isinstance(route, Route):
            response = client.get(route.path)
            assert response.status_code == 200, (route.path, response.status_code)
            print(response.text)
"""


@dataclasses.dataclass(frozen=True)
class Example:
    page: str
    line: int
    kind: str  # "run" or "app"
    code: str
    output: str | None
    backend: str  # "asyncio", "trio" or "as-written"

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}:{self.backend}"


def _examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            code = match["code"]
            marker = code.split("\n", 1)[0].strip()
            if marker not in ("# test: run", "# test: app"):
                continue
            kind = marker.removeprefix("# test: ")
            if kind == "app" or _DEFAULT_BACKEND.search(code):
                backends: tuple[str, ...] = ("asyncio", "trio")
            else:
                backends = ("as-written",)
            line = text.count("\n", 0, match.start()) + 1
            for backend in backends:
                found.append(Example(page, line, kind, code, match["output"], backend))
    return found


EXAMPLES = _examples()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example_runs(example: Example, tmp_path: pathlib.Path) -> None:
    program = tmp_path / "example.py"
    program.write_text(example.code, encoding="utf-8")
    runner = _RUN if example.kind == "run" else _SERVE
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", runner, str(program), example.backend],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=90,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for trouble in ("Traceback", "Exception ignored", "Warning:"):
        assert trouble not in result.stderr, result.stderr
    if example.output is not None:
        assert result.stdout == example.output


def test_every_page_has_examples_that_run() -> None:
    for page in PAGES:
        assert any(e.page == page for e in EXAMPLES), page
    assert {e.backend for e in EXAMPLES} == {"asyncio", "trio", "as-written"}
    assert {e.kind for e in EXAMPLES} == {"run", "app"}


def _literal(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def test_options_table_lists_every_parameter_in_order_with_its_default() -> None:
    text = (DOCS / "chatstream.md").read_text(encoding="utf-8")
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")][:2]
        for line in section.splitlines()
        if line.startswith("| `")
    ]
    parameters = list(inspect.signature(ChatStream.__init__).parameters.values())[1:]
    assert [name for name, _ in rows] == [f"`{p.name}`" for p in parameters]
    assert [default for _, default in rows] == [f"`{_literal(p.default)}`" for p in parameters]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: str) -> set[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # a comment in code is no heading
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", [*PAGES, "index.md"])
def test_relative_links_lead_somewhere(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = path or page
        assert (DOCS / linked).is_file(), f"{page}: {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{page}: {target}"


def test_index_lists_every_page() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md"):
        assert f"]({page})" in index, page
