"""A progress bar for slow model loads, from how long the same load took last time.

A model load is one long call with no progress of its own, so the bar advances with time
against an estimate: the duration of the previous load of the same thing (kept in
``<cache>/load-times.json``), or a given first guess. It never claims 100% before the load
returns. On a terminal it redraws one line; elsewhere (CI logs) it prints a start line and an
end line only.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["LoadProgress", "cache_dir"]

_WIDTH = 28


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
        self._started = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> LoadProgress:
        self._started = time.monotonic()
        if self.stream.isatty():
            self._thread = threading.Thread(target=self._draw_until_done, daemon=True)
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
            self.stream.write("\r\033[K")
        outcome = "failed" if exc_type is not None else "done"
        print(f"{self.label}: {outcome} in {self.elapsed:.1f} s", file=self.stream, flush=True)
        if exc_type is None:
            self._store(self.elapsed)

    def line(self, elapsed: float) -> str:
        """The bar as drawn after ``elapsed`` seconds."""
        if not self.expected:
            spin = "|/-\\"[int(elapsed * 5) % 4]
            return f"{self.label} {spin} {elapsed:.1f} s"
        fraction = min(elapsed / self.expected, 0.99)
        filled = int(fraction * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        return f"{self.label} [{bar}] {fraction:4.0%} {elapsed:.1f}/~{self.expected:.0f} s"

    def _draw_until_done(self) -> None:
        while not self._done.wait(0.2):
            self.stream.write("\r\033[K" + self.line(time.monotonic() - self._started))
            self.stream.flush()

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
