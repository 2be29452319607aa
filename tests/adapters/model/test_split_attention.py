"""Where a decode step splits its rows by length (the split itself is tested end to end with
the transformers backend)."""

from __future__ import annotations

from typing import Any

from chatstream.adapters.model.split_attention import MIN_COLUMNS_SAVED, plan_split, splittable
from chatstream.adapters.model.transformers_backend import TransformersBackend


def test_similar_lengths_are_not_split() -> None:
    assert plan_split([]) is None
    assert plan_split([900]) is None
    assert plan_split([900, 850, 870, 880]) is None


def test_one_long_row_among_short_ones_goes_alone() -> None:
    lengths = [100, 1500, 90, 120, 1, 100, 110, 95]
    assert plan_split(lengths) == ([4, 2, 7, 0, 5, 6, 3], 120, [1], 1500)


def test_the_split_point_is_where_the_columns_read_are_fewest() -> None:
    # Two groups of four: 4 x 200 + 4 x 2000 beats every other cut.
    lengths = [2000, 200, 1990, 150, 1900, 180, 1950, 190]
    short, short_columns, long, long_columns = plan_split(lengths) or ([], 0, [], 0)
    assert (sorted(short), short_columns) == ([1, 3, 5, 7], 200)
    assert (sorted(long), long_columns) == ([0, 2, 4, 6], 2000)


def test_small_savings_are_not_worth_a_second_call() -> None:
    # Saves more than a quarter of the columns, but fewer than the minimum.
    few = [4, MIN_COLUMNS_SAVED // 2]
    assert plan_split(few) is None
    # Saves enough columns (7 x 300), but not a quarter of them (20 %).
    assert MIN_COLUMNS_SAVED <= 7 * 300
    assert plan_split([1000] * 7 + [1300]) is None


def test_only_models_on_sdpa_are_split(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    assert splittable(model)
    assert TransformersBackend(model, tokenizer, num_slots=2, max_positions=64)._split
    off = TransformersBackend(
        model, tokenizer, num_slots=2, max_positions=64, split_attention=False
    )
    assert not off._split
    model.config._attn_implementation = "eager"
    try:
        assert not splittable(model)
    finally:
        model.config._attn_implementation = "sdpa"
