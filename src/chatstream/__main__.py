"""``python -m chatstream``: the command line."""

from __future__ import annotations

from chatstream.cli import main

main()
