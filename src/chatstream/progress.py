"""A progress bar for slow model loads, from how long the same load took last time.

A model load is one long call with no progress of its own, so the bar advances with time
against an estimate: the duration of the previous load of the same thing (kept in
``<cache>/load-times.json``), or a given first guess. It never claims 100% before the load
returns. The bar is a :mod:`tqdm` bar, so the bars that libraries draw during the load (the
GGUF conversion's, for one) stack under it instead of overwriting it. On a terminal it is
redrawn in place; elsewhere (CI logs) a start line and an end line are printed instead.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn

from tqdm import tqdm

__all__ = ["LoadProgress", "cache_dir"]

#: Seconds between two redraws of the bar.
_REFRESH = 0.2
#: The bar waits here until the load returns, however long past the estimate it takes.
_CAP = 0.99


def cache_dir() -> Path:
    """Where chatstream keeps converted models and load times.

    ``$CHATSTREAM_CACHE``, else ``$XDG_CACHE_HOME/chatstream``, else ``~/.cache/chatstream``.
    """
    explicit = os.environ.get("CHATSTREAM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatstream"


class LoadProgress:
    """``with LoadProgress("Loading model X", key="X"): load()`` shows a bar meanwhile.

    Args:
        label: what is happening, in words.
        key: names this load in the stored timings (None: nothing stored).
        expected: the first guess of the duration in seconds when none is stored.
        stream: where to draw (default stderr).
    """

    def __init__(
        self,
        label: str,
        *,
        key: str | None = None,
        expected: float | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        self.label = label
        self.key = key
        self.stream = stream or sys.stderr
        self.expected = self._stored() or expected
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: tqdm[NoReturn] | None = None
        self._started = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> LoadProgress:
        self._started = time.monotonic()
        if self.stream.isatty():
            self._bar = self._make_bar()
            self._thread = threading.Thread(target=self._advance_until_done, daemon=True)
            self._thread.start()
        else:
            guess = f" (about {self.expected:.2g} s)" if self.expected else ""
            print(f"{self.label}{guess} ...", file=self.stream, flush=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.elapsed = time.monotonic() - self._started
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()
        outcome = "failed" if exc_type is not None else "done"
        print(f"{self.label}: {outcome} in {self.elapsed:.1f} s", file=self.stream, flush=True)
        if exc_type is None:
            self._store(self.elapsed)

    def position(self, elapsed: float) -> float:
        """Where the bar stands after ``elapsed`` seconds: seconds against the estimate,
        held just short of it until the load returns."""
        if not self.expected:
            return elapsed
        return min(elapsed, self.expected * _CAP)

    def _make_bar(self) -> tqdm[NoReturn]:
        if self.expected:
            # Seconds as the unit: tqdm's own rate (1 s/s) then gives the time remaining.
            return tqdm(
                total=self.expected,
                desc=self.label,
                file=self.stream,
                leave=False,
                bar_format="{desc} |{bar}| {percentage:3.0f}% {elapsed}<~{remaining}",
            )
        return tqdm(desc=self.label, file=self.stream, leave=False, bar_format="{desc} {elapsed}")

    def _advance_until_done(self) -> None:
        bar = self._bar
        assert bar is not None
        while not self._done.wait(_REFRESH):
            bar.n = self.position(time.monotonic() - self._started)
            bar.refresh()

    def _path(self) -> Path:
        return cache_dir() / "load-times.json"

    def _stored(self) -> float | None:
        if self.key is None:
            return None
        try:
            value = json.loads(self._path().read_text()).get(self.key)
        except (OSError, ValueError):
            return None
        return float(value) if isinstance(value, int | float) and value > 0 else None

    def _store(self, seconds: float) -> None:
        if self.key is None:
            return
        path = self._path()
        try:
            times = json.loads(path.read_text()) if path.exists() else {}
            times[self.key] = round(seconds, 2)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(times, indent=1, sort_keys=True))
        except (OSError, ValueError):
            pass  # timings are a nicety; never fail a load over them
