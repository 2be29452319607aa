"""BatchSampler draws from exactly the distribution each row's parameters describe.

Every statistical test repeats one logits row N times in a single batch, counts the draws
and compares them with probabilities computed here in plain Python (``math.exp`` and sorted
lists, independently of torch) with a chi-square test at p = 0.001. Tokens of probability 0
must never be drawn at all. The global seed is fixed, so the tests are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from chatstream.adapters.model.sampling import BatchSampler, make_generator
from chatstream.core import GenerationParams

torch.set_num_threads(1)

N = 20_000
INF = math.inf
#: Chi-square critical values at p = 0.001, by degrees of freedom.
CRITICAL = {
    1: 10.828,
    2: 13.816,
    3: 16.266,
    4: 18.467,
    5: 20.515,
    6: 22.458,
    7: 24.322,
    8: 26.124,
    9: 27.877,
}
CPU = torch.device("cpu")
SAMPLER = BatchSampler()


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    torch.manual_seed(20240601)


def gp(**kwargs: object) -> GenerationParams:
    """Sampling parameters with top-k off unless given (the config default is 50)."""
    options: dict[str, object] = {"top_k": None}
    options.update(kwargs)
    return GenerationParams(**options)  # type: ignore[arg-type]


def expected(
    logits: Sequence[float], params: GenerationParams, seen: Sequence[int] = ()
) -> list[float]:
    """The exact next-token distribution, by the definition, in plain Python."""
    z = list(logits)
    penalty = params.repetition_penalty
    if penalty is not None:
        for token in set(seen):
            if params.repetition_penalty_method == "subtractive":
                z[token] -= penalty
            elif z[token] > 0:
                z[token] /= penalty
            else:
                z[token] *= penalty
    if params.greedy:
        best = max(range(len(z)), key=lambda i: (z[i], -i))
        return [1.0 if i == best else 0.0 for i in range(len(z))]
    z = [v / params.temperature for v in z]
    order = sorted(range(len(z)), key=lambda i: -z[i])  # stable: ties by index
    if params.top_k is not None:
        order = order[: params.top_k]
    top = z[order[0]]
    weights = {i: math.exp(z[i] - top) for i in order}
    total = sum(weights.values())
    kept: list[int] = []
    mass = 0.0
    for i in order:
        if params.top_p < 1.0 and mass >= params.top_p:
            break
        kept.append(i)
        mass += weights[i] / total
    kept_total = sum(weights[i] for i in kept)
    return [weights[i] / kept_total if i in kept else 0.0 for i in range(len(z))]


def counts_of(tokens: torch.Tensor, vocab: int) -> list[int]:
    assert tokens.dtype == torch.int64
    return [int(c) for c in torch.bincount(tokens, minlength=vocab)]


def assert_distribution(counts: Sequence[int], probs: Sequence[float]) -> None:
    """Never a token of probability 0; a chi-square fit at p = 0.001 for the others."""
    assert len(counts) == len(probs)
    n = sum(counts)
    for token, (count, p) in enumerate(zip(counts, probs, strict=True)):
        if p == 0.0:
            assert count == 0, f"token {token} has probability 0 but was drawn {count} times"
    support = [(c, p) for c, p in zip(counts, probs, strict=True) if p > 0.0]
    assert all(n * p >= 5 for _, p in support), "test design: expected counts too small"
    df = len(support) - 1
    if df == 0:
        return
    statistic = sum((c - n * p) ** 2 / (n * p) for c, p in support)
    assert statistic < CRITICAL[df], f"chi2={statistic:.1f} (df={df}) counts={list(counts)}"


def draw_counts(
    logits: Sequence[float],
    params: GenerationParams,
    *,
    seen: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
    n: int = N,
) -> list[int]:
    batch = torch.tensor([logits], dtype=dtype).repeat(n, 1)
    mask = torch.zeros_like(batch, dtype=torch.bool)
    mask[:, list(seen)] = True
    return counts_of(SAMPLER.sample(batch, [params] * n, seen=mask), len(logits))


def check(
    logits: Sequence[float],
    params: GenerationParams,
    *,
    seen: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
) -> list[float]:
    probs = expected(logits, params, seen)
    assert_distribution(draw_counts(logits, params, seen=seen, dtype=dtype), probs)
    return probs


LOGITS = [1.0, 0.5, 0.0, -0.5, -1.0, -2.0]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_sampling(temperature: float) -> None:
    probs = check(LOGITS, gp(temperature=temperature))
    z = [v / temperature for v in LOGITS]
    assert probs == pytest.approx([math.exp(v) / sum(math.exp(w) for w in z) for v in z])


def test_top_k_alone() -> None:
    logits = [0.3, 1.2, -0.4, 0.9, 1.0, 0.0, -1.0, 0.6]
    probs = check(logits, gp(top_k=3))
    assert [i for i, p in enumerate(probs) if p > 0] == [1, 3, 4]


def test_top_p_alone_keeps_relative_probabilities() -> None:
    probs = check([4.0, 2.0, 1.0, 0.0, -1.0, -2.0], gp(top_p=0.9))
    # The nucleus is {0, 1}, renormalized, not uniform.
    assert probs == pytest.approx([0.8808, 0.1192, 0, 0, 0, 0], abs=1e-4)


@pytest.mark.parametrize(
    ("logits", "params", "support"),
    [
        # After top-3 the probabilities are .40/.33/.27, so p=.5 keeps two tokens; on the
        # full distribution (.26/.21/.17/...) it would have kept three.
        ([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], gp(top_k=3, top_p=0.5), [0, 1]),
        # top-p cuts inside the top-4: .47/.29/.17/.06 -> two tokens.
        ([3.0, 2.5, 2.0, 1.0, 0.0, -1.0], gp(top_k=4, top_p=0.7), [0, 1]),
        # top-p keeps the whole top-k, with a temperature.
        ([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], gp(top_k=3, top_p=0.95, temperature=0.7), [0, 1, 2]),
    ],
)
def test_top_k_then_top_p(
    logits: list[float], params: GenerationParams, support: list[int]
) -> None:
    probs = check(logits, params)
    assert [i for i, p in enumerate(probs) if p > 0] == support


def test_no_top_k_no_top_p_is_the_softmax_not_uniform() -> None:
    logits = [3.0, 1.0, 0.0, -1.0, -2.0, -3.0]
    check(logits, gp(top_k=None, top_p=1.0))
    counts = draw_counts(logits, gp(top_k=None, top_p=1.0))
    assert counts[0] > 0.8 * N


@pytest.mark.parametrize("top_k", [6, 100])
def test_top_k_at_or_above_vocab_size_keeps_all(top_k: int) -> None:
    check(LOGITS, gp(top_k=top_k))
    check(LOGITS, gp(top_k=top_k, top_p=0.8))


def test_multiplicative_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = [1.0, 0.5, -0.5, 0.2, -1.0, 0.0]
    params = gp(repetition_penalty=1.2)
    probs = check(logits, params, seen=[0, 2])
    # Once per distinct token: 1/1.2 and -0.5*1.2, not 1/1.2**count.
    z = [1.0 / 1.2, 0.5, -0.6, 0.2, -1.0, 0.0]
    assert probs == pytest.approx([math.exp(v) / sum(math.exp(w) for w in z) for v in z])


def test_subtractive_penalty() -> None:
    logits = [1.0, 0.5, -0.5, 0.2, -1.0, 0.0]
    params = gp(repetition_penalty=0.7, repetition_penalty_method="subtractive", top_k=5)
    probs = check(logits, params, seen=[0, 4])
    z = [0.3, 0.5, -0.5, 0.2, -1.7, 0.0]
    top5 = [0, 1, 2, 3, 5]
    total = sum(math.exp(z[i]) for i in top5)
    assert probs == pytest.approx([math.exp(z[i]) / total if i in top5 else 0 for i in range(6)])


def test_penalty_needs_seen_and_a_neutral_penalty_is_exact() -> None:
    # Without `seen` nothing is known to repeat; a factor of 1 changes nothing.
    check(LOGITS, gp(repetition_penalty=1.5, temperature=0.5))
    check(LOGITS, gp(repetition_penalty=1.0), seen=[0, 1])


def test_greedy_rows_are_the_exact_argmax() -> None:
    logits = torch.randn(64, 300)
    tokens = SAMPLER.sample(logits, [gp(temperature=0.0)] * 64)
    assert torch.equal(tokens, logits.argmax(dim=-1))
    below_threshold = gp(temperature=5e-5, top_k=3, top_p=0.5)
    assert torch.equal(SAMPLER.sample(logits, [below_threshold] * 64), tokens)


@pytest.mark.parametrize(
    ("logits", "params", "best"),
    [
        ([2.0, 1.9, 0.0], gp(temperature=0, repetition_penalty=1.2), 1),  # 2/1.2 < 1.9
        ([-1.0, -1.1, -3.0], gp(temperature=0, repetition_penalty=1.2), 1),  # -1.2 < -1.1
        (
            [2.0, 1.5, 0.0],
            gp(temperature=0, repetition_penalty=1.0, repetition_penalty_method="subtractive"),
            1,
        ),
    ],
)
def test_greedy_rows_apply_the_penalty(
    logits: list[float], params: GenerationParams, best: int
) -> None:
    batch = torch.tensor([logits, logits])
    seen = torch.tensor([[True, False, False], [False, False, False]])
    tokens = SAMPLER.sample(batch, [params, params], seen=seen)
    assert tokens.tolist() == [best, 0]
    assert expected(logits, params, [0]).index(1.0) == best


def test_mixed_batch_each_row_follows_its_own_params() -> None:
    logits = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    cases = [
        (gp(temperature=0.0, repetition_penalty=1.5), [0]),
        (gp(top_k=2), []),
        (gp(top_p=0.6, temperature=0.5), []),
        (gp(repetition_penalty=1.3), [0, 1]),
        (
            gp(repetition_penalty=0.5, repetition_penalty_method="subtractive", top_k=4, top_p=0.8),
            [2],
        ),
        (gp(temperature=2.0), []),
    ]
    kinds = len(cases)
    params = [cases[i % kinds][0] for i in range(N * kinds)]
    seen = torch.zeros(N * kinds, len(logits), dtype=torch.bool)
    for kind, (_, tokens) in enumerate(cases):
        seen[kind::kinds, tokens] = True
    batch = torch.tensor([logits]).repeat(N * kinds, 1)
    drawn = SAMPLER.sample(batch, params, seen=seen)
    for kind, (p, tokens) in enumerate(cases):
        probs = expected(logits, p, tokens)
        assert_distribution(counts_of(drawn[kind::kinds], len(logits)), probs)
    assert set(drawn[0::kinds].tolist()) == {1}


@pytest.mark.parametrize(
    "params",
    [gp(), gp(top_k=3, top_p=0.8, temperature=0.7), gp(top_p=0.9)],
    ids=["plain", "top-k-top-p", "top-p"],
)
def test_seeded_rows_draw_the_right_distribution(params: GenerationParams) -> None:
    # Every row with its own generator: checks the per-token lookup of seeded noise.
    logits = [1.0, 0.5, 0.0, -0.5, -1.0, -2.0]
    generators = [make_generator(seed, CPU) for seed in range(N)]
    batch = torch.tensor([logits]).repeat(N, 1)
    tokens = SAMPLER.sample(batch, [params] * N, generators=generators)
    assert_distribution(counts_of(tokens, len(logits)), expected(logits, params))


SEEDED_VARIANTS = [
    gp(),
    gp(temperature=0.8, top_k=20),
    gp(top_k=10, top_p=0.8),
    gp(top_p=0.9),
    gp(temperature=0.0),
]


def _sequence(
    target: GenerationParams,
    seed: int,
    row: torch.Tensor,
    others: list[tuple[GenerationParams, int | None]],
    position: int,
    steps: int = 25,
) -> list[int]:
    """The target row's tokens over several calls, placed among ``others``."""
    generator = make_generator(seed, CPU)
    other_generators = [None if s is None else make_generator(s, CPU) for _, s in others]
    vocab = row.shape[0]
    result = []
    for _ in range(steps):
        params = [p for p, _ in others]
        params.insert(position, target)
        generators: list[torch.Generator | None] = list(other_generators)
        generators.insert(position, generator)
        batch = torch.randn(len(params), vocab)
        batch[position] = row
        tokens = SAMPLER.sample(batch, params, generators=generators)
        result.append(int(tokens[position]))
    return result


@pytest.mark.parametrize("target", SEEDED_VARIANTS)
def test_seeded_row_is_reproducible_whatever_the_batch(target: GenerationParams) -> None:
    row = torch.randn(200)
    alone = _sequence(target, 7, row, [], 0)
    assert _sequence(target, 7, row, [], 0) == alone
    crowd: list[tuple[GenerationParams, int | None]] = [
        (gp(top_k=150), 1),  # widens the top-k window
        (gp(top_k=3), None),
        (gp(top_p=0.5), None),
        (gp(top_p=0.95), 2),
        (gp(temperature=1.5), None),
        (gp(), 3),
        (gp(temperature=0.0), None),
        (target, None),
        (target, 8),
    ]
    assert _sequence(target, 7, row, crowd, 4) == alone
    assert _sequence(target, 7, row, crowd[5:], 0) == alone
    if not target.greedy:
        assert _sequence(target, 8, row, [], 0) != alone


def test_rows_without_a_generator_use_the_global_seed() -> None:
    logits = torch.randn(8, 100)
    params = [gp(), gp(top_k=5), gp(top_p=0.9), gp(top_k=40, top_p=0.9)] * 2
    torch.manual_seed(5)
    first = SAMPLER.sample(logits, params)
    torch.manual_seed(5)
    assert torch.equal(SAMPLER.sample(logits, params, generators=[None] * 8), first)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "params",
    [gp(), gp(top_p=0.9), gp(top_k=3, temperature=0.5), gp(repetition_penalty=1.2)],
)
def test_half_precision_logits(dtype: torch.dtype, params: GenerationParams) -> None:
    # These logits are exact in both formats, so the distribution is the same.
    check([4.0, 2.0, 1.0, 0.0, -1.0, -2.0], params, dtype=dtype, seen=[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_extremes_give_valid_tokens(dtype: torch.dtype) -> None:
    big = torch.finfo(dtype).max
    logits = [big, big, -big, -INF, 0.0]
    params = [
        gp(temperature=0.5),
        gp(top_k=2),
        gp(top_p=0.5),
        gp(repetition_penalty=1.2),
        gp(repetition_penalty=2.0, repetition_penalty_method="subtractive", top_k=4),
        gp(temperature=0.0, repetition_penalty=1.2),
    ] * 500
    batch = torch.tensor([logits], dtype=dtype).repeat(len(params), 1)
    seen = torch.zeros(batch.shape, dtype=torch.bool)
    seen[:, [1, 3]] = True
    tokens = SAMPLER.sample(batch, params, seen=seen)
    # Only the two largest logits can come out. (In bf16, max / 0.5 overflows float32 to
    # +inf; a row with +inf logits then always gives its first +inf token.)
    assert 0 in set(tokens.tolist()) <= {0, 1}
    # The all-greedy shortcut works on the raw half-precision tensor.
    assert SAMPLER.sample(batch[:4], [gp(temperature=0.0)] * 4).tolist() == [0] * 4
    random = torch.randn(64, 1000).to(dtype)
    drawn = SAMPLER.sample(random, params[:64], seen=seen.new_zeros(64, 1000))
    assert drawn.dtype == torch.int64 and bool(((drawn >= 0) & (drawn < 1000)).all())


@pytest.mark.parametrize(
    ("params", "seen"),
    [
        (gp(), []),
        (gp(temperature=0.3), []),
        (gp(top_k=5), []),  # k larger than the number of finite logits
        (gp(top_p=0.99), []),
        (gp(top_k=4, top_p=0.9), []),
        (gp(repetition_penalty=1.2), [0, 1]),
        (gp(repetition_penalty=0.5, repetition_penalty_method="subtractive"), [0, 3]),
    ],
)
def test_minus_infinity_is_never_drawn(params: GenerationParams, seen: list[int]) -> None:
    check([-INF, 1.0, -INF, 0.5, -INF, 0.0], params, seen=seen)


def test_input_logits_are_not_modified() -> None:
    logits = torch.randn(6, 50)
    logits[:, 3] = -INF
    before = logits.clone()
    params = [
        gp(temperature=0.0, repetition_penalty=1.3),
        gp(repetition_penalty=1.3),
        gp(top_k=5, repetition_penalty=0.4, repetition_penalty_method="subtractive"),
        gp(top_p=0.7),
        gp(top_k=7, top_p=0.5, temperature=0.6),
        gp(),
    ]
    seen = torch.rand(6, 50) < 0.3
    SAMPLER.sample(logits, params, seen=seen, generators=[None, make_generator(1, CPU)] * 3)
    assert torch.equal(logits, before)


def test_result_shape_and_empty_batch() -> None:
    tokens = SAMPLER.sample(torch.randn(3, 10), [gp(), gp(top_k=2), gp(temperature=0)])
    assert tokens.shape == (3,) and tokens.dtype == torch.int64 and tokens.device == CPU
    empty = SAMPLER.sample(torch.empty(0, 10), [])
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_make_generator_is_seeded() -> None:
    a = torch.rand(5, generator=make_generator(3, CPU))
    b = torch.rand(5, generator=make_generator(3, CPU))
    c = torch.rand(5, generator=make_generator(4, CPU))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"logits": torch.zeros(5)}, "logits must be"),
        ({"params": [gp()]}, "1 params for 2 rows"),
        ({"generators": [None]}, "1 generators for 2 rows"),
        ({"seen": torch.zeros(2, 4, dtype=torch.bool)}, "seen must be"),
        ({"seen": torch.zeros(2, 5)}, "seen must be"),
    ],
)
def test_mismatched_shapes_are_rejected(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"logits": torch.zeros(2, 5), "params": [gp(), gp()]}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SAMPLER.sample(**arguments)  # type: ignore[arg-type]
