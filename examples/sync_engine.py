"""Drive chatstream's sans-IO core from a plain synchronous loop: no event loop, no thread.

A custom adapter does three things: feed inputs to the engine, carry its step plans to a
model, and route its per-request events to whoever waits for them. Here the "model" is a
toy that spells out a canned answer one character per step, and the tokenizer maps code
points to ids, so the example runs with the standard library alone:

    python examples/sync_engine.py
"""

from __future__ import annotations

from collections.abc import Sequence

from chatstream.core import (
    NEED_INPUT,
    ChatPromptTogetherRedPajamaINCITEChat,
    ChatStreamConfig,
    Conversation,
    DecodingOptions,
    Engine,
    Finished,
    Rejected,
    StepCompleted,
    StepPlan,
    Submit,
    TextDelta,
)

END_OF_TEXT = 0  # the toy model's stop token


class CodePointTokenizer:
    """Token id = Unicode code point; 0 is the stop token."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int], /) -> str:
        return "".join(chr(t) for t in token_ids if t != END_OF_TEXT)


class ToyModel:
    """Answers every prompt with a fixed text, one token per step, then a stop token."""

    def __init__(self, answer: str) -> None:
        self.answer = [ord(c) for c in answer] + [END_OF_TEXT]
        self.produced: dict[int, int] = {}

    def run(self, plan: StepPlan) -> StepCompleted:
        for released in plan.release:
            self.produced.pop(released.request_id, None)  # free the "KV cache"
        tokens = {}
        needing_a_token = [c.request_id for c in plan.prefill if c.last]
        needing_a_token += [d.request_id for d in plan.decode]
        for request_id in needing_a_token:
            n = self.produced.get(request_id, 0)
            self.produced[request_id] = n + 1
            tokens[request_id] = (self.answer[n],)
        return StepCompleted(step=plan.step, tokens=tokens)


def main() -> dict[int, str]:
    tokenizer = CodePointTokenizer()
    config = ChatStreamConfig(
        num_of_concurrent_executions=2, max_queue_size=1, max_new_tokens=64, context_len=512
    )
    engine = Engine(config, tokenizer)
    model = ToyModel(" Alan Turing was a mathematician.\n<human>: (never shown)")

    # Four users ask at once: two run, one waits, one is turned away.
    conversations = {}
    for request_id, question in enumerate(["Who is Alan Turing?", "And Ada?", "Grace?", "Edsger?"]):
        conversation = Conversation()
        conversation.start_turn(
            question, user_message_id=f"u{request_id}", reply_id=f"a{request_id}"
        )
        prompt = conversation.render(
            ChatPromptTogetherRedPajamaINCITEChat,
            encode=tokenizer.encode,
            budget=config.prompt_budget,
        )
        conversations[request_id] = conversation
        engine.send(
            Submit(
                request_id=request_id,
                prompt_token_ids=prompt.token_ids,
                params=config.generation_params(),
                decoding=DecodingOptions(
                    stop_strings=prompt.stop_strings,
                    stop_token_ids=frozenset({END_OF_TEXT}),
                    strip_leading_whitespace=prompt.strip_reply,
                ),
            )
        )

    replies: dict[int, str] = {}
    while True:
        event = engine.next_event()
        if event is NEED_INPUT:
            break  # nothing runs and nothing waits
        if not isinstance(event, StepPlan):
            print(event)
        match event:
            case StepPlan():
                engine.send(model.run(event))
            case TextDelta(request_id=request_id, text=text):
                conversations[request_id].append_reply(text)
            case Finished(request_id=request_id, reason=reason):
                reply = conversations[request_id].finish_reply(reason)
                replies[request_id] = reply.content
            case Rejected(request_id=request_id, reason=reason):
                replies[request_id] = f"<rejected: {reason}>"
    print(engine.statistics())
    return replies


if __name__ == "__main__":
    for request_id, reply in sorted(main().items()):
        print(f"request {request_id}: {reply!r}")
