"""The docs and examples cannot rot: generated pages are current, examples run."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def _generated_page_is_current(script: str, page: str) -> str:
    """Run a docs generator; the page it prints must be the committed one. Returns it."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / script)], capture_output=True, text=True, check=True
    )
    committed = (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert result.stdout == committed, f"stale: regenerate docs/{page} with docs/{script}"
    return committed


def test_admission_diagram_is_current() -> None:
    committed = _generated_page_is_current("make_admission_diagram.py", "admission-diagram.md")
    # The diagram shows the whole life of a request.
    for edge in (
        "new --> rejected: submit / Rejected",
        "waiting --> running: another's finish / Admitted",
        "waiting --> waiting: another's cancel / QueuePositionChanged",
        "running --> cancelled: own cancel",
    ):
        assert edge in committed


def test_architecture_page_is_current() -> None:
    committed = _generated_page_is_current("make_architecture_diagram.py", "architecture.md")
    # The generated part shows the layering the rules require.
    for line in (
        "adapters_http --> adapters_service",
        "facade --> adapters_http",
        "adapters_driver --> adapters_model",
        "| 4 | adapters.http | `chatstream/adapters/http/original_api.py` |",
    ):
        assert line in committed
    assert "adapters_http --> facade" not in committed
    assert "adapters_model --> adapters_http" not in committed


def test_sync_engine_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sync_engine.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    assert "request 0: 'Alan Turing was a mathematician.'" in lines
    assert "request 2: 'Alan Turing was a mathematician.'" in lines
    assert "request 3: '<rejected: queue_full>'" in lines
    assert "Queued(request_id=2, position=1)" in lines
