"""The OpenAI and vLLM sampling options of BatchSampler: logit bias, presence and frequency
penalties, min-p, min_tokens, the grammar callback and the log-probabilities.

Distributions are checked as in ``test_sampling``: the expected probabilities computed in
plain Python from the definitions, a chi-square fit on many draws of one repeated row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from chatstream.adapters.model.sampling import BatchSampler, token_logprobs
from chatstream.core import GenerationParams

from .test_sampling import CPU, INF, LOGITS, N, assert_distribution, counts_of, expected, gp

torch.set_num_threads(1)

STOP = 5  # the model's end-of-sequence id in these tests
SAMPLER = BatchSampler(stop_token_ids={STOP})


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    torch.manual_seed(20261207)


def adjusted(
    logits: Sequence[float], params: GenerationParams, counts: Sequence[int]
) -> list[float]:
    """The logits after the logit bias and OpenAI's penalties, by their definitions."""
    z = list(logits)
    for token, bias in params.logit_bias:
        z[token] += bias
    for token, count in enumerate(counts):
        z[token] -= params.presence_penalty * (count > 0) + params.frequency_penalty * count
    return z


def draw(
    logits: Sequence[float],
    params: GenerationParams,
    *,
    counts: Sequence[int] | None = None,
    generated: int | None = None,
) -> list[int]:
    batch = torch.tensor([logits]).repeat(N, 1)
    count_tensor = None
    if counts is not None:
        count_tensor = torch.tensor([counts], dtype=torch.float32).repeat(N, 1)
    tokens = SAMPLER.sample(
        batch,
        [params] * N,
        counts=count_tensor,
        generated=None if generated is None else [generated] * N,
    )
    return counts_of(tokens, len(logits))


@pytest.mark.parametrize(
    "params",
    [
        gp(logit_bias={0: -1.5, 4: 2.0}),
        gp(logit_bias={2: 3.0}),
        gp(logit_bias={1: -100.0}, temperature=0.7, top_k=4),
    ],
)
def test_logit_bias_is_added_to_the_logits(params: GenerationParams) -> None:
    probs = expected(adjusted(LOGITS, params, [0] * len(LOGITS)), params)
    assert_distribution(draw(LOGITS, params), probs)


@pytest.mark.parametrize(
    ("presence", "frequency"), [(1.0, 0.0), (0.0, 0.5), (0.8, 0.3), (-1.0, -0.5)]
)
def test_presence_and_frequency_penalties(presence: float, frequency: float) -> None:
    params = gp(presence_penalty=presence, frequency_penalty=frequency)
    counts = [3, 0, 1, 0, 2, 0]
    probs = expected(adjusted(LOGITS, params, counts), params)
    assert_distribution(draw(LOGITS, params, counts=counts), probs)


def test_penalties_without_counts_do_nothing_and_zero_penalties_are_exact() -> None:
    logits = torch.randn(4, 30)
    counts = torch.rand(4, 30).mul(3).floor()
    greedy = gp(temperature=0.0)
    plain = SAMPLER.sample(logits, [greedy] * 4)
    assert torch.equal(SAMPLER.sample(logits, [greedy] * 4, counts=counts), plain)
    penalized = gp(temperature=0.0, presence_penalty=2.0)
    assert torch.equal(SAMPLER.sample(logits, [penalized] * 4), plain)


def test_greedy_rows_follow_the_penalties() -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    counts = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    params = [gp(temperature=0.0, frequency_penalty=0.5)]
    # 3.0 - 2 * 0.5 = 2.0 < 2.5: the repeated token loses its lead.
    assert SAMPLER.sample(logits, params, counts=counts).tolist() == [1]


@pytest.mark.parametrize(
    "params",
    [gp(min_p=0.3), gp(min_p=0.1, temperature=2.0), gp(min_p=0.2, top_k=4), gp(min_p=1.0)],
)
def test_min_p_keeps_the_tokens_at_least_min_p_times_as_likely_as_the_best(
    params: GenerationParams,
) -> None:
    free = expected(LOGITS, GenerationParams(temperature=params.temperature, top_k=params.top_k))
    best = max(free)
    kept = [p if p >= params.min_p * best else 0.0 for p in free]
    probs = [p / sum(kept) for p in kept]
    assert_distribution(draw(LOGITS, params), probs)


@pytest.mark.parametrize("params", [gp(min_tokens=3), gp(min_tokens=3, temperature=0.0)])
def test_no_stop_token_before_min_tokens(params: GenerationParams) -> None:
    logits = [0.0, 0.1, -0.3, 0.2, 0.0, 4.0]  # the stop token (5) is by far the likeliest
    early = draw(logits, params, generated=2)
    assert early[STOP] == 0
    late = draw(logits, params, generated=3)
    assert late[STOP] > N // 2


def test_min_tokens_masks_the_rows_own_stop_token_ids_too() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.0, 0.0, 0.0, -INF]])
    params = [gp(temperature=0.0, min_tokens=1, stop_token_ids=(1,))]
    assert SAMPLER.sample(logits, params, generated=[0]).tolist() == [2]
    assert SAMPLER.sample(logits, params, generated=[1]).tolist() == [1]


def test_the_constraint_sees_float32_scores_and_binds_every_row() -> None:
    logits = torch.randn(3, 12, dtype=torch.bfloat16)
    before = logits.clone()

    def only_even(scores: torch.Tensor) -> None:
        assert scores.dtype == torch.float32
        scores[:, 1::2] = -INF

    params = [gp(temperature=0.0), gp(), gp(top_k=3, top_p=0.5)]
    for _ in range(50):
        tokens = SAMPLER.sample(logits, params, constrain=only_even)
        assert all(token % 2 == 0 for token in tokens.tolist())
    assert torch.equal(logits, before)


def test_the_options_never_write_to_the_callers_logits() -> None:
    logits = torch.randn(4, 16)
    before = logits.clone()
    params = [
        gp(temperature=0.0, logit_bias={3: 5.0}),
        gp(presence_penalty=1.0, min_p=0.2),
        gp(min_tokens=4, frequency_penalty=-1.0, top_k=5),
        gp(top_p=0.5),
    ]
    counts = torch.ones(4, 16)

    def constrain(scores: torch.Tensor) -> None:
        scores[:, 0] = -INF

    SAMPLER.sample(logits, params, counts=counts, generated=[0] * 4, constrain=constrain)
    assert torch.equal(logits, before)


def test_token_logprobs_are_the_raw_log_softmax_with_the_best_alternatives() -> None:
    logits = torch.tensor([LOGITS, list(reversed(LOGITS)), LOGITS])
    tokens = torch.tensor([2, 0, 4])
    result = token_logprobs(logits, tokens, [3, None, 0])
    total = math.log(sum(math.exp(v) for v in LOGITS))
    first, second, third = result
    assert second is None
    assert first is not None and third is not None
    assert first.token_id == 2 and first.logprob == pytest.approx(LOGITS[2] - total, abs=1e-5)
    assert [token for token, _ in first.top] == [0, 1, 2]
    for token, logprob in first.top:
        assert logprob == pytest.approx(LOGITS[token] - total, abs=1e-5)
    assert third.token_id == 4 and third.top == ()
    assert token_logprobs(logits, tokens, [None] * 3) == [None] * 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"counts": torch.zeros(2, 5, dtype=torch.bool)}, "counts must be"),
        ({"generated": [0]}, "1 generated for 2 rows"),
    ],
)
def test_mismatched_shapes_are_rejected(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"logits": torch.zeros(2, 5), "params": [gp(), gp()]}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SAMPLER.sample(**arguments)  # type: ignore[arg-type]


def test_a_sampler_without_stop_ids_still_masks_the_rows_own() -> None:
    sampler = BatchSampler()
    logits = torch.tensor([[0.0, 3.0, 2.0]])
    params = [gp(temperature=0.0, min_tokens=2, stop_token_ids=(1,))]
    assert sampler.sample(logits, params, generated=[0]).tolist() == [2]


def peaked(rows: int, vocab: int = 5000) -> torch.Tensor:
    """Logits like a model's: a few likely tokens, a long tail."""
    logits = torch.randn(rows, vocab) * 2.0
    logits[:, :40] += 9.0
    return logits


@pytest.mark.parametrize(
    "params",
    [gp(top_p=0.9), gp(top_p=0.5, temperature=0.7), gp(top_p=0.95, min_p=0.01)],
)
def test_top_p_inside_a_window_draws_what_the_whole_sort_draws(params: GenerationParams) -> None:
    from chatstream.adapters.model.sampling import _draw_nucleus, _draw_window, make_generator

    logits = peaked(6)
    for seed in range(5):
        window = _draw_nucleus(
            logits, [params] * 6, [make_generator(seed + i, CPU) for i in range(6)]
        )
        whole = _draw_window(
            logits, [params] * 6, [make_generator(seed + i, CPU) for i in range(6)]
        )
        assert torch.equal(window, whole)


def test_a_flat_distribution_falls_back_to_the_whole_sort() -> None:
    from chatstream.adapters.model.sampling import _draw_nucleus, _draw_window, make_generator

    flat = torch.zeros(2, 3000)  # top-p 0.9 keeps 2,700 tokens: past the window
    params = [gp(top_p=0.9)] * 2
    window = _draw_nucleus(flat, params, [make_generator(1, CPU), make_generator(2, CPU)])
    whole = _draw_window(flat, params, [make_generator(1, CPU), make_generator(2, CPU)])
    assert torch.equal(window, whole)
    counts = counts_of(SAMPLER.sample(flat[:1].repeat(20_000, 1), [gp(top_p=0.9)] * 20_000), 3000)
    assert 2000 < sum(c > 0 for c in counts) <= 2700  # the kept 90 %, in sorted order


def test_rows_of_one_batch_take_the_window_each_needs() -> None:
    from chatstream.adapters.model.sampling import _draw_nucleus, _draw_window, make_generator

    logits = torch.zeros(3, 6000)
    logits[0, :10] = 12.0  # 10 tokens hold almost everything
    logits[1, :1000] = 9.0  # 1,000 do
    # Row 2 is flat: 90 % of it is 5,400 tokens, past every window.
    params = [gp(top_p=0.9, temperature=0.8)] * 3
    for seed in range(3):
        gens = [make_generator(seed * 3 + i, CPU) for i in range(3)]
        again = [make_generator(seed * 3 + i, CPU) for i in range(3)]
        assert torch.equal(_draw_nucleus(logits, params, gens), _draw_window(logits, params, again))
