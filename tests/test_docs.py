"""The docs and examples cannot rot: generated pages are current, examples run."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def test_admission_diagram_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_admission_diagram.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    committed = (ROOT / "docs" / "admission-diagram.md").read_text(encoding="utf-8")
    assert result.stdout == committed, "run: python docs/make_admission_diagram.py > docs/..."
    # The diagram shows the whole life of a request.
    for edge in (
        "new --> rejected: submit / Rejected",
        "waiting --> running: another's finish / Admitted",
        "waiting --> waiting: another's cancel / QueuePositionChanged",
        "running --> cancelled: own cancel",
    ):
        assert edge in committed


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
