"""Per-step cost of grammar masks against the unconstrained sampler step, on SmolLM2.

    python benchmarks/grammar_masks.py [--batch 8] [--steps 300] [--threads 1]

Every row of the batch follows one JSON schema (a typical response_format: nested object,
array, enum, bounded integer, pattern) and walks through its own valid document, one token
per step, each row at a different place in it, so the masks are those of mid-generation
states and change at every step (a row that reaches the end of its document starts over).
Timed per step: filling the masks of all rows (llguidance, on the CPU), applying them to
``[batch, 49152]`` float32 logits, and the matchers' ``accept`` of the sampled tokens; and,
for comparison, :class:`~chatstream.adapters.model.sampling.BatchSampler` on the same logits
(greedy, and temperature with top-p). Then the compile time of the schema, cold and cached.

Not a test: nothing here asserts a timing. The embedded model is converted on first use.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))

from chatstream.adapters.model.grammar import GrammarMatcher, Grammars
from chatstream.adapters.model.sampling import BatchSampler
from chatstream.core import GenerationParams

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "pattern": "^[a-z.]+@[a-z]+\\.[a-z]{2,3}$"},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["street", "city", "zip"],
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "role", "tags", "address", "active"],
}


def documents(count: int) -> list[str]:
    """Valid documents of ``SCHEMA`` of different lengths, in the grammar's layout."""
    docs = []
    for i in range(count):
        doc = {
            "name": f"Person number {i} " + "Smith" * (i % 3),
            "age": 20 + i,
            "email": f"person.{'abcdefgh'[i % 8]}@example.com",
            "role": ["admin", "editor", "viewer"][i % 3],
            "tags": ["alpha", "beta", "gamma", "日本語"][: 1 + i % 4],
            "address": {"street": f"{i} Main Street", "city": "Kyoto", "zip": f"{60000 + i}"},
            "active": i % 2 == 0,
        }
        docs.append(json.dumps(doc, ensure_ascii=False))
    return docs


class Walker:
    """One row: a matcher walking through one document, token by token, forever."""

    def __init__(self, grammars: Grammars, tokens: list[int], start: int) -> None:
        self.compiled = grammars.compile("json_schema", json.dumps(SCHEMA))
        self.tokens = tokens
        self.matcher = self.compiled.matcher()
        self.position = 0
        for _ in range(start):
            self.advance()

    def next_token(self) -> int:
        return self.tokens[self.position]

    def advance(self) -> None:
        if not self.matcher.accept(self.next_token()):
            raise RuntimeError(f"the grammar rejects the document: {self.matcher.error}")
        self.position += 1
        if self.position == len(self.tokens):
            assert self.matcher.is_terminated
            self.matcher = self.compiled.matcher()
            self.position = 0


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def timed(function: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def masked_steps(
    grammars: Grammars, walkers: list[Walker], steps: int, vocab: int
) -> dict[str, list[float]]:
    batch = len(walkers)
    times: dict[str, list[float]] = {"fill": [], "apply": [], "accept": []}
    template = torch.randn(batch, vocab)
    for _ in range(steps):
        logits = template.clone()
        matchers: list[GrammarMatcher | None] = [w.matcher for w in walkers]
        start = time.perf_counter()
        masks = grammars.fill_masks(matchers)
        filled = time.perf_counter()
        grammars.apply_masks(logits, masks)
        applied = time.perf_counter()
        for row, walker in enumerate(walkers):
            # The document's next token must be allowed by the mask just applied.
            assert torch.isfinite(logits[row, walker.next_token()])
        checked = time.perf_counter()
        for walker in walkers:
            walker.advance()
        accepted = time.perf_counter()
        times["fill"].append(filled - start)
        times["apply"].append(applied - filled)
        times["accept"].append(accepted - checked)
    return times


def sampler_step(batch: int, vocab: int, params: GenerationParams, steps: int) -> list[float]:
    sampler = BatchSampler()
    # Shaped like a language model's: a few likely tokens over a long tail (flat random logits
    # would make top-p sort the whole vocabulary, which a model's rarely needs).
    logits = torch.randn(batch, vocab) * 2.0
    logits[:, :40] += 9.0
    every = [params] * batch
    return timed(lambda: sampler.sample(logits, every).tolist(), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch and llguidance threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from chatstream.embedded import load_embedded_model

    model, tokenizer = load_embedded_model()
    vocab = int(model.config.vocab_size)
    del model

    start = time.perf_counter()
    grammars = Grammars(tokenizer, vocab, mask_threads=args.threads)
    setup = time.perf_counter() - start

    docs = documents(args.batch)
    tokens = [list(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs]
    walkers = [
        Walker(grammars, t, start=(row * len(t)) // args.batch) for row, t in enumerate(tokens)
    ]
    for _ in range(20):  # warm-up
        masked_steps(grammars, walkers, 1, vocab)
    times = masked_steps(grammars, walkers, args.steps, vocab)

    fill, apply, accept = (median_ms(times[k]) for k in ("fill", "apply", "accept"))
    sampler = {
        name: median_ms(sampler_step(args.batch, vocab, params, 50))
        for name, params in [
            ("greedy", GenerationParams(temperature=0)),
            ("T=1 top-k 50 (the defaults)", GenerationParams()),
            ("T=0.7 top-p 0.9", GenerationParams(temperature=0.7, top_k=None, top_p=0.9)),
        ]
    }

    schema_text = json.dumps(SCHEMA)
    cold = []
    for _ in range(5):
        fresh = Grammars(tokenizer, vocab, mask_threads=args.threads)  # an empty cache
        start = time.perf_counter()
        fresh.compile("json_schema", schema_text)
        cold.append(time.perf_counter() - start)
    cached = timed(lambda: grammars.compile("json_schema", schema_text), 1000)
    new_matcher = timed(lambda: grammars.compile("json_schema", schema_text).matcher(), 1000)

    print(
        f"SmolLM2 tokenizer, vocab {vocab}, batch {args.batch} (all rows constrained), "
        f"{args.threads} thread(s), {args.steps} steps, document lengths "
        f"{min(map(len, tokens))}-{max(map(len, tokens))} tokens; median ms per step"
    )
    print(f"  fill masks     {fill:7.3f} ms")
    print(f"  apply masks    {apply:7.3f} ms")
    print(f"  fill + apply   {fill + apply:7.3f} ms")
    print(f"  accept tokens  {accept:7.3f} ms")
    print(f"  total          {fill + apply + accept:7.3f} ms")
    print("unconstrained sampler step (BatchSampler.sample, same batch and vocab):")
    for name, ms in sampler.items():
        print(f"  {name:28s} {ms:7.3f} ms")
    print(
        f"compile the schema: cold {median_ms(cold):.2f} ms, cached {median_ms(cached) * 1e3:.1f} "
        f"µs, a new matcher {median_ms(new_matcher) * 1e3:.1f} µs; "
        f"Grammars setup (tokenizer) {setup * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
