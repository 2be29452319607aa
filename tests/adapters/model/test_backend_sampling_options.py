"""The OpenAI sampling options through the transformers backend and the engine, on the tiny
random model: what a request asks for is what its tokens show, batched with others."""

from __future__ import annotations

from typing import Any

import torch

from chatstream.core import FinishReason, GenerationParams

from .test_transformers_backend import (
    PROMPTS,
    Harness,
    encode,
    generate_fixed_length,
)

torch.set_num_threads(1)


def greedy(**options: Any) -> GenerationParams:
    return GenerationParams(**{"max_new_tokens": 12, "temperature": 0.0, **options})


def test_logprobs_are_the_models_log_softmax_at_each_generated_token(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    ids = encode(tokenizer, PROMPTS[1])
    harness = Harness(model, tokenizer)
    other = harness.submit(encode(tokenizer, PROMPTS[0]), greedy())
    request = harness.submit(ids, greedy(logprobs=3, ignore_eos=True))
    harness.run()
    tokens = harness.tokens[request]
    reported = harness.logprobs[request]
    assert harness.logprobs.get(other, []) == []
    expected = torch.log_softmax(
        torch.cat(generate_fixed_length(model, tokenizer, ids, len(tokens)).logits).float(), -1
    )
    # Every generated token is reported (the text of all of them was released).
    assert [lp.token_id for lp in reported] == tokens
    for position, lp in enumerate(reported):
        row = expected[position]
        assert abs(lp.logprob - float(row[lp.token_id])) < 1e-3
        assert len(lp.top) == 3
        best = row.topk(3)
        assert lp.top[0][0] == int(best.indices[0])  # greedy: the chosen one is the best
        for (_, value), reference in zip(lp.top, best.values.tolist(), strict=True):
            assert abs(value - reference) < 1e-3


def test_min_tokens_holds_back_the_end_of_sequence(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    eos = tokenizer.eos_token_id
    harness = Harness(model, tokenizer)
    forced = ((eos, 100.0),)  # the model would end at once
    early = harness.submit(encode(tokenizer, PROMPTS[3]), greedy(logit_bias=forced))
    held = harness.submit(encode(tokenizer, PROMPTS[3]), greedy(logit_bias=forced, min_tokens=5))
    harness.run()
    assert harness.tokens[early] == [eos]
    assert eos not in harness.tokens[held][:5] and harness.tokens[held][5] == eos
    assert harness.finished[held].reason is FinishReason.STOP
    assert harness.finished[held].usage.completion_tokens == 6


def test_a_stop_token_id_ends_the_reply_without_its_text(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    ids = encode(tokenizer, PROMPTS[4])
    harness = Harness(model, tokenizer)
    free = harness.submit(ids, greedy(ignore_eos=True))
    harness.run()
    third = harness.tokens[free][2]
    stopped = harness.submit(ids, greedy(ignore_eos=True, stop_token_ids=(third,)))
    harness.run()
    assert harness.tokens[stopped] == harness.tokens[free][:3]
    assert harness.finished[stopped].reason is FinishReason.STOP
    assert harness.text[stopped] == tokenizer.decode(harness.tokens[free][:2])


def generated_repeats(tokens: list[int]) -> int:
    return len(tokens) - len(set(tokens))


def test_frequency_and_presence_penalties_count_the_reply_only(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    ids = encode(tokenizer, PROMPTS[4])
    harness = Harness(model, tokenizer, max_new_tokens=40)
    options = {"max_new_tokens": 40, "ignore_eos": True}
    plain = harness.submit(ids, greedy(**options))
    frequency = harness.submit(ids, greedy(frequency_penalty=2.0, **options))
    presence = harness.submit(ids, greedy(presence_penalty=2.0, **options))
    harness.run()
    assert generated_repeats(harness.tokens[plain]) > 0, "the plain greedy run should repeat"
    for penalised in (frequency, presence):
        assert generated_repeats(harness.tokens[penalised]) < generated_repeats(
            harness.tokens[plain]
        )
    # The slot a penalised request leaves keeps no counts for the next one.
    again = harness.submit(ids, greedy(**options))
    harness.run()
    assert harness.tokens[again] == harness.tokens[plain]


def test_logit_bias_and_min_p_in_a_sampled_batch(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    ids = encode(tokenizer, PROMPTS[2])
    harness = Harness(model, tokenizer)
    favourite = 42
    biased = harness.submit(
        ids, GenerationParams(max_new_tokens=8, logit_bias=((favourite, 100.0),))
    )
    narrow = harness.submit(ids, GenerationParams(max_new_tokens=8, min_p=1.0, seed=3))
    reference = harness.submit(ids, greedy(max_new_tokens=8))
    harness.run()
    assert harness.tokens[biased] == [favourite] * 8
    # min_p = 1 keeps only the best token: greedy, whatever the draw.
    assert harness.tokens[narrow] == harness.tokens[reference]
