"""The HTTP pages cannot rot: docs/http-api.md, docs/sessions-and-roles.md and docs/migration.md.

* The migrated program, ``examples/migrate_from_original.py``, serves the original protocol
  through its hand-written routes (with the finish callback and the feedback hook) and the
  appended APIs, on asyncio and on trio; the migration page shows it verbatim.
* The reference names every endpoint with its method, API name and default-role access, every
  metric family, every error code the handlers can answer, every ``HttpOptions`` field with its
  default, every ``create_app`` argument and every generation parameter.
* The code blocks that build apps (a ``Mount``, FastAPI) work, and every relative link of the
  pages leads to a file and heading that exist.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import itertools
import pathlib
import re
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import pytest
from starlette.testclient import TestClient

from chatstream import ChatStream
from chatstream.adapters.http.common import HttpOptions
from chatstream.adapters.http.metrics import ChatMetrics
from chatstream.adapters.http.streaming import EOS
from chatstream.adapters.model import mock_texts
from chatstream.adapters.starlette import API_PATHS, create_app
from chatstream.core import GenerationParams, RejectReason
from chatstream.core.engine import EngineStatistics
from chatstream.core.roles import API_NAMES, AUTH_METHODS, ClientRoles

ROOT = pathlib.Path(__file__).parent.parent
DOCS = ROOT / "docs"
HTTP_ADAPTERS = ROOT / "src" / "chatstream" / "adapters" / "http"
EXAMPLE = ROOT / "examples" / "migrate_from_original.py"
PAGES = ("http-api.md", "sessions-and-roles.md", "migration.md")
BACKENDS = ["asyncio", "trio"]


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of its level."""
    level = heading.split(" ", 1)[0]
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n{level} ", body, maxsplit=1)[0]


def table_rows(text: str, first_header: str | None = None) -> list[list[str]]:
    """The cells of the first table in ``text`` (whose first header cell is ``first_header``,
    if given), header row first."""
    for table in re.findall(r"^\|.*?(?=\n[^|]|\Z)", text, re.M | re.S):
        rows = [
            [cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in table.splitlines()
            if not line.startswith("|---")
        ]
        if first_header is None or rows[0][0] == first_header:
            return rows
    raise AssertionError(f"no table with the header {first_header!r}")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


# ---------------------------------------------------------------------- the migrated program


def load_example() -> ModuleType:
    """A fresh copy of the example module (its ChatStream and its lists are module state)."""
    spec = importlib.util.spec_from_file_location("migrate_from_original_under_test", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_migrated_program_speaks_the_original_protocol(backend: str) -> None:
    example = load_example()
    with TestClient(example.app, backend=backend) as client:  # type: ignore[arg-type]
        # A chat turn through the hand-written route, in the original format.
        response = client.post("/chat_stream", json={"user_input": "hello"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.text.endswith(EOS)
        chunks = response.text.split(EOS)[:-1]
        assert len(chunks) > 3
        assert chunks[-1] == mock_texts.ROUND_EN[0]
        # Every chunk is the whole reply so far.
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(chunks))
        assert example.finished == ["success"]

        # Feedback through the hand-written route reaches its hook.
        message_id = response.headers["x-chatstream-last-generated-message-id"]
        answer = client.post(
            "/set_feedback",
            json={"message_id": message_id, "is_like": True, "form_data": {"note": "good"}},
        )
        assert answer.json() == {"success": True, "message": "success"}
        (received,) = example.feedback
        assert received["target_message_id"] == message_id
        assert received["target_message"] == mock_texts.ROUND_EN[0]
        assert received["is_like"] is True
        assert received["form_data"] == {"note": "good"}
        assert [m["role"] for m in received["prompt"]] == ["user", "assistant"]
        assert received["generation_params"]["top_k_value"] == 50

        # The appended APIs, with the default roles.
        (worker,) = client.get("/get_load").json()["chatstream_workers"]
        assert worker == {
            "name": "node:0",
            "processing": 0,
            "waiting": 0,
            "_num_of_next_queue": 0,
            "_num_of_request_queue": 0,
            "max_processing": 2,
            "max_waiting": 5,
        }
        assert client.get("/get_prompt").json()["detail"] == "Denied on role layer."
        history = client.get("/get_history").json()["messages"]
        assert history[1]["feedback"] == {"is_like": True, "data": {"note": "good"}}
        assert client.get("/health").json()["status"] == "ok"
        index = client.get("/")
        assert index.headers["content-type"].startswith("text/html")
        assert '"title": "My assistant"' in index.text
        assert client.get("/chatstream.js").status_code == 200
    assert example.finished == ["success"]


def test_the_migration_page_shows_the_program_verbatim() -> None:
    program = EXAMPLE.read_text(encoding="utf-8")
    assert program in python_blocks(page("migration.md"))


# ---------------------------------------------------------------------- the reference


def test_every_endpoint_is_in_the_table_with_its_default_access() -> None:
    header, *rows = table_rows(section(page("http-api.md"), "## Endpoints"))
    assert header[:5] == ["method", "path", "API name", "`user`", "`agent`"]
    by_route = {(row[0], row[1]): row for row in rows}
    roles = ClientRoles.default()
    agent = roles.agent_default
    assert agent is not None

    def access(allowed: bool) -> str:
        return "yes" if allowed else "no"

    endpoints = [
        (path, method, name) for name, (path, methods) in API_PATHS.items() for method in methods
    ]
    endpoints += [
        ("/chat_stream/stop", "POST", "chat_stream"),
        ("/switch_version", "POST", "chat_stream"),
        ("/conversations/{id}", "PATCH", "conversations"),
        ("/conversations/{id}", "DELETE", "conversations"),
        ("/conversations/{id}/select", "POST", "conversations"),
        ("/vendor/{name}", "GET", "webui_js"),
        ("/v1/models", "GET", "openai"),
        ("/v1/models/{model}", "GET", "openai"),
        ("/v1/completions", "POST", "openai"),
        ("/tokenize", "POST", "openai"),
        ("/detokenize", "POST", "openai"),
        ("/version", "GET", "openai"),
    ]
    for path, method, name in endpoints:
        row = by_route.get((f"`{method}`", f"`{path}`"))
        assert row is not None, (method, path)
        assert row[2] == f"`{name}`", row
        assert row[3] == access(roles.browser_default.allows(name)), row
        assert row[4] == access(agent.allows(name)), row
    for free in ("/health", "/load"):
        assert by_route[("`GET`", f"`{free}`")][2:5] == ["none", "always", "always"]
    assert len(by_route) == len(endpoints) + 2  # nothing undocumented, nothing stale


def _idle_stats() -> EngineStatistics:
    counts: dict[str, Any] = {f.name: 0 for f in dataclasses.fields(EngineStatistics)}
    counts.update(step_in_flight=False, draining=False, lost=None)
    return EngineStatistics(**counts)


def _metric_families() -> list[str]:
    text = ChatMetrics().render(_idle_stats())
    return re.findall(r"^# TYPE (\S+) ", text, re.M)


def test_every_metric_family_is_documented() -> None:
    families = _metric_families()
    assert "chatstream_requests_running" in families
    text = section(page("http-api.md"), "### Metrics")
    for family in families:
        assert f"`{family}`" in text, family
    # Nothing stale: every family in the section's tables is exposed (process_* on Linux only).
    own = text.split("\n## ", 1)[0]  # up to the next section, of a higher level
    documented = re.findall(r"^\| `(\w+)` \|", own, re.M)
    assert "python_info" in documented
    for name in documented:
        assert name in families or (name.startswith("process_") and sys.platform != "linux"), name


def test_the_metrics_registry_example_adds_a_family() -> None:
    (code,) = python_blocks(section(page("http-api.md"), "### Metrics").split("\n## ", 1)[0])
    chat_stream = ChatStream(use_mock_response=True)
    exec(compile(code, "<docs block>", "exec"), {"chat_stream": chat_stream})
    text = chat_stream.http_api().metrics.render(_idle_stats())
    assert '\nmyapp_feedback_total{kind="good"} 1.0\n' in text


def _constants(node: ast.AST) -> list[str]:
    """The strings an expression can be: a constant, or either branch of ``a if c else b``."""
    if isinstance(node, ast.IfExp):
        return _constants(node.body) + _constants(node.orelse)
    return [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []


def _error_codes(
    path: pathlib.Path,
    calls: Mapping[str, tuple[int, ...]],
    functions: set[str],
    keywords: tuple[str, ...] = (),
) -> set[str]:
    """String constants given at ``calls[name]`` argument positions (and as their
    ``keywords``), the values of ``"error"`` keys in dict literals, and the strings returned by
    ``functions``."""
    codes: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            for index in calls.get(node.func.id, ()):
                if index < len(node.args):
                    codes.update(_constants(node.args[index]))
            if node.func.id in calls:
                for keyword in node.keywords:
                    if keyword.arg in keywords:
                        codes.update(_constants(keyword.value))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if key is not None and _constants(key) == ["error"]:
                    codes.update(_constants(value))
        elif isinstance(node, ast.FunctionDef) and node.name in functions:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and inner.value is not None:
                    codes.update(_constants(inner.value))
    return codes


def test_every_error_code_is_documented() -> None:
    calls = {"error_response": (1,), "BadRequest": (1,)}
    codes = _error_codes(HTTP_ADAPTERS / "original_api.py", calls, {"_error_code"})
    codes |= _error_codes(HTTP_ADAPTERS / "common.py", calls, set())
    # The 503 answers use the reject reason as their code: `str(reason)`.
    codes |= {reason.value for reason in RejectReason if reason is not RejectReason.QUEUE_FULL}
    assert {"invalid_json", "body_too_large", "forbidden", "too_many_requests"} <= codes
    assert {"conversation_busy", "bad_request", "draining"} <= codes
    text = page("http-api.md")
    for code in sorted(codes):
        assert f"`{code}`" in text, code
    # The OpenAI-compatible API: error types and codes, on its own page.
    openai = _error_codes(HTTP_ADAPTERS / "openai_schemas.py", {"RequestError": (2,)}, set())
    for module in ("openai_api.py", "openai_answers.py", "openai_models.py", "operations.py"):
        openai |= _error_codes(
            HTTP_ADAPTERS / module, {"openai_error": (2,)}, set(), keywords=("code",)
        )
    assert {"invalid_request_error", "rate_limit_exceeded", "context_length_exceeded"} <= openai
    assert {"missing_required", "unknown_parameter", "invalid_value"} <= openai
    assert {"model_not_found", "permission_error"} <= openai
    openai_section = section(page("openai-api.md"), "## Errors")
    for code in sorted(openai):
        assert f"`{code}`" in openai_section, code


def test_limits_list_every_http_option_with_its_default() -> None:
    rows = table_rows(section(page("http-api.md"), "## Limits"))
    documented = {row[0]: row[1] for row in rows[1:]}
    for field in dataclasses.fields(HttpOptions):
        assert documented.get(f"`{field.name}`", "").startswith(f"`{field.default!r}`"), field


def test_create_app_arguments_and_generation_params_are_documented() -> None:
    text = page("http-api.md")
    getting = section(text, "## Getting an app")
    for name in list(inspect.signature(create_app).parameters)[1:]:
        assert f"| `{name}` |" in getting, name
    params = section(text, "### `POST /set_generation_params`")
    for field in dataclasses.fields(GenerationParams):
        assert f"`{field.name}`" in params, field.name
    for original in ("top_k_value", "top_p_value"):
        assert f"| `{original}` |" in params


def test_roles_page_names_every_api_and_auth_method_and_the_real_defaults() -> None:
    text = page("sessions-and-roles.md")
    for name in API_NAMES:
        assert f"`{name}`" in text, name
    methods = table_rows(section(text, "### Role definitions"), "`auth_method`")
    assert {row[0] for row in methods} >= {f"`{method}`" for method in AUTH_METHODS}
    _, *rows = table_rows(section(text, "### The default roles"))
    defaults = {row[0]: row[2] for row in rows}
    roles = ClientRoles.default()
    agent = roles.agent_default
    assert agent is not None
    for role in (roles.browser_default, agent):
        listed = set(re.findall(r"`(\w+)`", defaults[f"`{role.name}`"]))
        assert listed == set(role.allowed), role.name


# ---------------------------------------------------------------------- code blocks


def _app_from(code: str) -> Any:
    namespace: dict[str, Any] = {"__name__": "docs_block"}
    exec(compile(code, "<docs block>", "exec"), namespace)
    return namespace["app"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_mount_example_serves_under_its_prefix(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATSTREAM_SECRET_KEY", "a test secret")
    (code,) = [b for b in python_blocks(page("http-api.md")) if "Mount(" in b]
    with TestClient(_app_from(code), backend=backend) as client:  # type: ignore[arg-type]
        assert client.get("/chat").url.path == "/chat/"  # redirected
        assert client.get("/chat/").headers["content-type"].startswith("text/html")
        assert client.get("/chat/health").json()["status"] == "ok"
        assert client.get("/chat/metrics").status_code == 404  # excluded
        response = client.post(
            "/chat/chat_stream", json={"user_input": "hi"}, headers={"Accept": "text/event-stream"}
        )
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "event: started" in response.text and "event: done" in response.text
        assert "chatstream_session=" in response.headers["set-cookie"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_fastapi_example_streams_through_add_route(
    backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("fastapi")
    monkeypatch.setenv("CHATSTREAM_SECRET_KEY", "a test secret")
    (code,) = [b for b in python_blocks(page("migration.md")) if b.startswith("# test: fastapi")]
    with TestClient(_app_from(code), backend=backend) as client:  # type: ignore[arg-type]
        response = client.post("/chat_stream", json={"user_input": "hello"})
        assert response.status_code == 200
        assert response.text.split(EOS)[-2] == mock_texts.ROUND_EN[0]
        message_id = response.headers["x-chatstream-last-generated-message-id"]
        answer = client.post("/set_feedback", json={"message_id": message_id})
        assert answer.json() == {"success": True, "message": "success"}
        assert client.get("/get_load").status_code == 200
    assert message_id in capsys.readouterr().out  # the hook (print) got the feedback


# ---------------------------------------------------------------------- links


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("name", PAGES)
def test_relative_links_lead_somewhere(name: str) -> None:
    text = re.sub(r"```.*?```", "", page(name), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets, name
    for target in targets:
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (DOCS / path) if path else DOCS / name
        assert linked.is_file(), f"{name}: {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{name}: {target}"
    assert f"]({name})" in page("index.md")
