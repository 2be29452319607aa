"""chatstream's version: what ``chatstream.__version__`` and ``GET /version`` say (the
distribution's version in ``pyproject.toml``)."""

from __future__ import annotations

__all__ = ["VERSION"]

VERSION = "0.1.0.dev0"
