"""What prefix reuse changes in the output, by dtype: greedy replies with reuse against without.

    python -m benchmarks.reuse_precision [--conversations 4] [--turns 6] [--max-tokens 48]

SmolLM2-135M-Instruct on the CPU, one torch thread. Each conversation renders its history
through the chat template at every turn, as the server does; the same conversations run twice
in one process, with the prefix cache (slots and host memory: two slots for four
conversations, so turns go through host memory too) and without it. Printed per dtype: turns
whose reply differs, the first differing token's turn, and the largest difference of the
first-token logits. A reused prefix is computed by earlier forwards in a different order of
sums than one prefill, so only rounding differs; what it changes is printed, not asserted.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.models import load_bench_model
from chatstream.adapters.model.transformers_backend import TransformersBackend
from chatstream.core import (
    NEED_INPUT,
    ChatStreamConfig,
    DecodingOptions,
    Engine,
    Finished,
    GenerationParams,
    StepPlan,
    Submit,
)

QUESTIONS = (
    "What is the capital of France?",
    "And of Italy? Answer in one sentence.",
    "Which of the two cities is bigger?",
    "Name a famous museum in each.",
    "Which one would you visit first, and why?",
    "Sum up our chat in two lines.",
)


class Runner:
    """An engine and a backend in one thread, recording tokens and first-token logits."""

    def __init__(self, model: Any, tokenizer: Any, *, prefix_cache: bool) -> None:
        self.config = ChatStreamConfig(
            num_of_concurrent_executions=2,
            context_len=2048,
            max_new_tokens=48,
            prefix_cache=prefix_cache,
        )
        self.backend = TransformersBackend(model, tokenizer, num_slots=2, max_positions=2048)
        self.engine = Engine(
            self.config, self.backend, kv_bytes_per_token=self.backend.kv_bytes_per_token
        )
        self.first_logits: dict[int, torch.Tensor] = {}
        sample = self.backend._sample

        def recording(step: int, rows: Any, batch: torch.Tensor, *args: Any) -> Any:
            for (request_id, _, _), row in zip(rows, batch, strict=True):
                self.first_logits.setdefault(request_id, row.float().clone())
            return sample(step, rows, batch, *args)

        self.backend._sample = recording  # type: ignore[method-assign,assignment]
        self.next_id = 0

    def reply(self, ids: list[int], max_tokens: int) -> tuple[int, list[int], int]:
        """(request id, reply tokens, cached tokens) of one greedy request."""
        request_id = self.next_id
        self.next_id += 1
        params = GenerationParams(max_new_tokens=max_tokens, temperature=0.0)
        stop = DecodingOptions(stop_token_ids=self.backend.stop_token_ids)
        self.engine.send(
            Submit(request_id=request_id, prompt_token_ids=tuple(ids), params=params, decoding=stop)
        )
        tokens: list[int] = []
        while True:
            event = self.engine.next_event()
            if event is NEED_INPUT:
                raise RuntimeError("the engine stalled")
            if isinstance(event, StepPlan):
                result = self.backend.run_step(event)
                tokens += result.tokens.get(request_id, ())
                self.engine.send(result)
            elif isinstance(event, Finished):
                if event.error:
                    raise RuntimeError(event.error)
                return request_id, tokens, event.usage.cached_tokens


def run(dtype: str, args: argparse.Namespace) -> str:
    model, tokenizer = load_bench_model("smollm2", dtype=dtype)
    runners = {reuse: Runner(model, tokenizer, prefix_cache=reuse) for reuse in (True, False)}
    histories: dict[bool, list[list[dict[str, str]]]] = {
        reuse: [[] for _ in range(args.conversations)] for reuse in runners
    }
    differing, first_turn, worst, cached, turns = 0, None, 0.0, 0, 0
    for turn in range(args.turns):
        for user in range(args.conversations):  # conversations take turns: slots change hands
            replies = {}
            for reuse, runner in runners.items():
                messages = histories[reuse][user]
                question = f"(user {user}) {QUESTIONS[turn % len(QUESTIONS)]}"
                messages.append({"role": "user", "content": question})
                text = tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
                ids = list(tokenizer(text)["input_ids"])
                request_id, tokens, hit = runner.reply(ids, args.max_tokens)
                replies[reuse] = (request_id, tokens)
                if reuse:
                    cached += hit
                reply_text = tokenizer.decode(tokens, skip_special_tokens=True)
                messages.append({"role": "assistant", "content": reply_text})
            turns += 1
            (with_id, with_tokens), (without_id, without_tokens) = replies[True], replies[False]
            gap = (
                (runners[True].first_logits[with_id] - runners[False].first_logits[without_id])
                .abs()
                .max()
                .item()
            )
            worst = max(worst, gap)
            if with_tokens != without_tokens:
                differing += 1
                first_turn = turn + 1 if first_turn is None else first_turn
    stats = runners[True].engine.statistics().prefix
    restored = stats.restored_tokens if stats else 0
    return (
        f"| {dtype} | {differing} of {turns} | {first_turn or '-'} | {worst:.2e} | "
        f"{cached:,} | {restored:,} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| dtype | replies that differ | first at turn | max first-token logit gap |", end="")
    print(" cached tokens | of which restored |")
    print("|---|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        print(run(dtype, args), flush=True)


if __name__ == "__main__":
    main()
