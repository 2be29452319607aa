"""Cost of stop-string matching per token, by the number and length of the stop strings.

    python benchmarks/stop_strings.py [--tokens 2000]

Feeds a reply of ``--tokens`` chunks of four characters (about one token each) through the
core's ``StopStringMatcher`` with no stop string, one short one, the 16-string cap at 16
and at 256 characters each (the largest a request may send), and the worst case for a
matcher that compares at every offset: 16 strings of 256 characters sharing a 255-character
stem, on a text that keeps almost matching them. Prints microseconds per token.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from chatstream.core.decoding import StopStringMatcher


def per_token_us(stops: tuple[str, ...], text: str, chunk: int = 4) -> float:
    chunks = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    best = float("inf")
    for _ in range(5):
        matcher = StopStringMatcher(stops)
        start = time.perf_counter()
        for piece in chunks:
            matcher.push(piece)
        matcher.flush()
        best = min(best, time.perf_counter() - start)
    return best / len(chunks) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()
    prose = ("the quick brown fox jumps over the lazy dog " * 1000)[: args.tokens * 4]
    stem = "x" * 255
    near_miss = ((stem + "?") * (args.tokens * 4 // 256 + 1))[: args.tokens * 4]
    cases = [
        ("none", (), prose),
        ("1 x 6 chars", ("<|end|>",), prose),
        ("16 x 16 chars", tuple(f"<|stop-{i:02d}-pad|>" for i in range(16)), prose),
        ("16 x 256 chars", tuple(f"{i:02d}" + "q" * 254 for i in range(16)), prose),
        (
            "16 x 256, shared stem, near misses",
            tuple(stem + chr(97 + i) for i in range(16)),
            near_miss,
        ),
    ]
    print(f"stop-string matching, {args.tokens} tokens of 4 characters")
    print(f"{'stop strings':<38}{'us/token':>10}")
    for name, stops, text in cases:
        print(f"{name:<38}{per_token_us(stops, text):>10.2f}")


if __name__ == "__main__":
    main()
