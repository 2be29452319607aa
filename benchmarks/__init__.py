"""Benchmarks of chatstream against the original ChatStream and bare model loops.

Not tests: nothing here asserts a timing. See docs/benchmarks.md.
"""
