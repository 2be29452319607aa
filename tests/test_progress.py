"""The load progress bar: a tqdm bar on a terminal, two lines in a log, timings remembered."""

from __future__ import annotations

import io
import json
import pathlib
import re
import time

import pytest
from tqdm import tqdm

from chatstream.progress import LoadProgress, cache_dir


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("CHATSTREAM_CACHE", str(tmp_path))
    return tmp_path


def test_the_cache_dir_follows_the_environment(
    cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cache_dir() == cache
    monkeypatch.delenv("CHATSTREAM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache / "xdg"))
    assert cache_dir() == cache / "xdg" / "chatstream"


def test_in_a_log_a_start_line_and_an_end_line(cache: pathlib.Path) -> None:
    log = io.StringIO()
    with LoadProgress("Loading m", key="m", expected=35.0, stream=log):
        time.sleep(0.05)
    lines = log.getvalue().splitlines()
    assert lines[0] == "Loading m (about 35 s) ..."
    assert re.fullmatch(r"Loading m: done in \d+\.\d s", lines[1])
    assert len(lines) == 2
    # The next load of the same thing expects what this one took.
    stored = json.loads((cache / "load-times.json").read_text())
    assert set(stored) == {"m"}
    assert stored["m"] >= 0.05
    assert LoadProgress("again", key="m", expected=35.0).expected == stored["m"]


def test_a_failed_load_says_so_and_stores_nothing(cache: pathlib.Path) -> None:
    log = io.StringIO()
    with pytest.raises(RuntimeError), LoadProgress("Loading m", key="m", stream=log):
        raise RuntimeError("no")
    assert log.getvalue().splitlines()[-1].startswith("Loading m: failed in ")
    assert not (cache / "load-times.json").exists()


def test_on_a_terminal_a_tqdm_bar_that_stops_short_of_the_end() -> None:
    terminal = Terminal()
    with LoadProgress("Loading m", expected=0.3, stream=terminal) as progress:
        time.sleep(0.7)
        assert progress.position(0.7) == pytest.approx(0.297)
    out = terminal.getvalue()
    assert "Loading m |" in out
    percentages = [int(p) for p in re.findall(r"(\d+)%", out)]
    assert percentages and max(percentages) == 99  # never 100% before the load returns
    assert re.search(r"Loading m: done in \d+\.\d s\n$", out)


def test_without_an_estimate_the_bar_shows_the_time_only() -> None:
    terminal = Terminal()
    with LoadProgress("Loading m", stream=terminal) as progress:
        time.sleep(0.3)
        assert progress.position(5.0) == 5.0
    out = terminal.getvalue()
    assert "Loading m 00:0" in out
    assert "%" not in out


def test_a_library_bar_inside_stacks_under_ours() -> None:
    terminal = Terminal()
    with LoadProgress("Loading m", expected=10.0, stream=terminal):
        time.sleep(0.3)
        for _ in tqdm(range(3), desc="Converting", file=terminal):
            time.sleep(0.05)
    out = terminal.getvalue()
    # tqdm knows both bars: the inner one is drawn one line down, not over ours.
    assert "Converting" in out and "Loading m |" in out
    assert "\n" in out.split("Converting")[0].rsplit("Loading m |", 1)[-1]


def test_unreadable_or_invalid_timings_are_ignored(cache: pathlib.Path) -> None:
    (cache / "load-times.json").write_text("not json")
    assert LoadProgress("x", key="m", expected=3.0).expected == 3.0
    (cache / "load-times.json").write_text(json.dumps({"m": -1}))
    assert LoadProgress("x", key="m").expected is None
    assert LoadProgress("x", key=None, expected=2.0).expected == 2.0
