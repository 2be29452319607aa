"""Conformance of the OpenAI-compatible API, written from OpenAI's API reference and the
peers' suites (vLLM ``tests/entrypoints/openai/``, llama.cpp ``tools/server/tests/unit/``):
a real server process on the tiny random model, the official ``openai`` client and raw HTTP.

Replies of a random model are noise, so the tests compare the server with itself (greedy is
deterministic) and with what a field must do to the tokens: counts, ids, log-probabilities.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import transformers

from tests.http.conftest import Server, launch_server
from tests.tiny_model import build_tiny_model

PROMPT: list[Any] = [{"role": "user", "content": "the quick brown fox"}]
GREEDY: dict[str, Any] = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    # Room for a tool prompt (~400 tokens) and a call.
    return build_tiny_model(tmp_path_factory.mktemp("tiny-openai"), max_positions=2048)


@pytest.fixture(scope="module")
def tokenizer(model_dir: pathlib.Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def server(request: pytest.FixtureRequest, model_dir: pathlib.Path) -> Iterator[Server]:
    options = {"num_of_concurrent_executions": 4, "max_queue_size": 4, "max_new_tokens": 64}
    started = launch_server(
        factory="tests.http.apps:tiny_model_app",
        loop=str(request.param),
        env={
            "CHATSTREAM_TEST_MODEL_DIR": str(model_dir),
            "CHATSTREAM_TEST_OPTIONS": json.dumps(options),
        },
    )
    yield started
    started.stop()
    started.log.unlink(missing_ok=True)


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=30)


def refusal(server: Server, body: dict[str, Any], path: str = "/v1/chat/completions") -> Any:
    response = post(server, path, {"model": "tiny", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def idle(server: Server) -> bool:
    worker = httpx.get(f"{server.base_url}/get_load").json()["chatstream_workers"][0]
    return bool(worker["processing"] == 0 and worker["waiting"] == 0)


# ---------------------------------------------------------------------- chat completions


def test_a_chat_completion_has_openais_shape(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=6, **GREEDY)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    (choice,) = reply.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6


def test_max_tokens_with_a_null_max_completion_tokens(server: Server) -> None:
    body = {
        "model": "tiny",
        "messages": PROMPT,
        "max_tokens": 5,
        "max_completion_tokens": None,
        "ignore_eos": True,
    }
    assert post(server, "/v1/chat/completions", body).json()["usage"]["completion_tokens"] == 5
    body["max_completion_tokens"] = 3
    assert post(server, "/v1/chat/completions", body).json()["usage"]["completion_tokens"] == 3


def test_null_means_the_default_for_every_optional_field(server: Server) -> None:
    nulls = dict.fromkeys(
        [
            "n",
            "stream",
            "stream_options",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "logprobs",
            "top_logprobs",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "tools",
            "tool_choice",
            "response_format",
            "user",
            "max_completion_tokens",
            "parallel_tool_calls",
            "top_k",
            "min_p",
        ]
    )
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 2, **nulls}
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": -1}, "seed"),
        ({"n": 17}, "n"),
        ({"n": 0}, "n"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"presence_penalty": 5.0}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {"not-a-token": 1}}, "logit_bias.not-a-token"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias.99999999"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": "yes"}, "stream"),
        ({"stop": [1]}, "stop[0]"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"max_completion_tokens": 100_000}, "max_completion_tokens"),
        ({"store": True}, "store"),
        ({"foo": 1}, "foo"),
        ({"functions": []}, "functions"),
        ({"stop_token_ids": [10**9]}, "stop_token_ids[0]"),
        ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
        ({"top_k": 0}, "top_k"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                ]
            },
            "messages[1].content[0].type",
        ),
    ],
)
def test_an_invalid_field_is_a_400_naming_it(
    server: Server, body: dict[str, Any], param: str
) -> None:
    error = refusal(server, {"messages": PROMPT, **body})
    assert error["param"] == param, error
    assert param.split("[")[0].split(".")[0] in error["message"]
    assert "max_new_tokens" not in error["message"]  # the client's names only


def test_the_model_may_be_left_out(server: Server) -> None:
    response = post(server, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": 2})
    assert response.status_code == 200, response.text


def test_a_missing_field_is_named(server: Server) -> None:
    response = post(server, "/v1/chat/completions", {"model": "tiny"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "missing_required")


def test_a_form_encoded_body_is_refused(server: Server) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions", data={"model": "tiny"}, timeout=10
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]
    assert idle(server)


def test_n_choices_are_independent_rows_with_usage_summed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=8, n=3, seed=11, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1, "seeded choices draw with seed + i"
    assert reply.usage is not None and reply.usage.completion_tokens == 24
    alone = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=8, n=1, extra_body={"ignore_eos": True}
    )
    assert alone.usage is not None
    assert reply.usage.prompt_tokens == alone.usage.prompt_tokens  # the prompt counted once
    again = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=8, n=3, seed=11, extra_body={"ignore_eos": True}
    )
    assert [c.message.content for c in again.choices] == texts


def test_streamed_n_choices_and_the_usage_chunk(client: openai.OpenAI, server: Server) -> None:
    stream = client.chat.completions.create(
        model="tiny",
        messages=PROMPT,
        max_tokens=5,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 10
    text = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        text[choice.index] += choice.delta.content or ""
        if choice.finish_reason is not None:
            finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "length", 1: "length"}
    whole = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=5, **GREEDY)
    assert text[0] == text[1] == whole.choices[0].message.content
    assert idle(server)


def test_logprobs_with_alternatives(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=6, logprobs=True, top_logprobs=3, **GREEDY
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == 6
    for entry in logprobs.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        values = [top.logprob for top in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert entry.bytes == entry.top_logprobs[0].bytes
        assert entry.logprob == pytest.approx(values[0], abs=1e-5)
    exact = b"".join(bytes(entry.bytes or []) for entry in logprobs.content)
    assert exact.decode("utf-8", errors="replace") == reply.choices[0].message.content


def test_streamed_logprobs_cover_every_token(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=7, logprobs=True, stream=True, **GREEDY
    )
    entries = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                entries += choice.logprobs.content
    assert len(entries) == 7 and all(entry.top_logprobs == [] for entry in entries)


def test_penalties_change_a_greedy_reply(client: openai.OpenAI) -> None:
    def reply(**options: Any) -> str:
        answer = client.chat.completions.create(
            model="tiny", messages=PROMPT, max_tokens=40, **GREEDY, **options
        )
        return str(answer.choices[0].message.content)

    plain = reply()
    assert reply(frequency_penalty=2.0) != plain
    assert reply(presence_penalty=2.0) != plain
    assert reply(frequency_penalty=0.0, presence_penalty=0.0) == plain


def test_logit_bias_forces_a_token(client: openai.OpenAI, tokenizer: Any) -> None:
    token = tokenizer.convert_tokens_to_ids("fox")
    reply = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=4, logit_bias={str(token): 100}, **GREEDY
    )
    assert reply.choices[0].message.content == tokenizer.decode([token] * 4)


def test_stop_token_ids_and_min_tokens(client: openai.OpenAI, tokenizer: Any) -> None:
    token = tokenizer.convert_tokens_to_ids("fox")
    forced: dict[str, Any] = {"logit_bias": {str(token): 100}, "max_tokens": 10}
    stopped = client.chat.completions.create(
        model="tiny", messages=PROMPT, extra_body={"stop_token_ids": [token]}, **forced
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == ""
    assert stopped.usage is not None and stopped.usage.completion_tokens == 1
    held = client.chat.completions.create(
        model="tiny",
        messages=PROMPT,
        extra_body={"stop_token_ids": [token], "min_tokens": 3},
        **forced,
    )
    assert held.usage is not None and held.usage.completion_tokens == 4
    assert held.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_min_p_one_is_greedy(client: openai.OpenAI) -> None:
    def reply(**options: Any) -> str:
        extra = {"ignore_eos": True, **options.pop("extra", {})}
        answer = client.chat.completions.create(
            model="tiny", messages=PROMPT, max_tokens=12, extra_body=extra, **options
        )
        return str(answer.choices[0].message.content)

    assert reply(seed=5, temperature=1.0) == reply(seed=5, temperature=1.0)
    assert reply(seed=5, temperature=1.0) != reply(seed=6, temperature=1.0)
    greedy = reply(temperature=0)
    assert reply(temperature=1.0, seed=9, extra={"min_p": 1.0}) == greedy


def test_developer_role_tool_results_and_a_prefilled_reply(
    server: Server, tokenizer: Any, client: openai.OpenAI
) -> None:
    history = [
        {"role": "developer", "content": "answer briefly"},
        {"role": "user", "content": "what is the weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    answered = post(
        server, "/v1/chat/completions", {"model": "tiny", "messages": history, "max_tokens": 3}
    )
    assert answered.status_code == 200, answered.text
    # An assistant message last is continued: the same tokens as completing the rendered text.
    prefill = [*PROMPT, {"role": "assistant", "content": "the lazy"}]
    continued = client.chat.completions.create(
        model="tiny", messages=prefill, max_tokens=6, **GREEDY
    )
    text = tokenizer.apply_chat_template(prefill, tokenize=False, continue_final_message=True)
    assert text.endswith("the lazy")
    completed = client.completions.create(
        model="tiny", prompt=tokenizer(text)["input_ids"], max_tokens=6, **GREEDY
    )
    assert continued.choices[0].message.content == completed.choices[0].text


def test_a_full_server_refuses_all_n_choices_and_keeps_no_slot(server: Server) -> None:
    # 4 slots and 4 places in the queue: the ninth choice finds no room.
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 60, "ignore_eos": True, "n": 9}
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert idle(server)


def test_a_client_leaving_an_n_choice_stream_frees_every_slot(server: Server) -> None:
    body = {
        "model": "tiny",
        "messages": PROMPT,
        "max_tokens": 60,
        "n": 3,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
    for _ in range(100):
        if idle(server):
            break
        httpx.get(f"{server.base_url}/health")
    assert idle(server)


# ---------------------------------------------------------------------- completions


def test_a_text_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt="the quick brown", **GREEDY)
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion"
    assert reply.usage is not None and reply.usage.completion_tokens == 16  # OpenAI's default
    assert reply.choices[0].finish_reason == "length"


def test_several_prompts_times_n(client: openai.OpenAI, tokenizer: Any) -> None:
    ids = tokenizer("the lazy dog")["input_ids"]
    reply = client.completions.create(
        model="tiny", prompt=[ids, ids[:2]], n=2, max_tokens=3, **GREEDY
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[0].text == reply.choices[1].text  # greedy, same prompt
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(ids) + 2 and reply.usage.completion_tokens == 12


def test_echo_and_legacy_logprobs(client: openai.OpenAI) -> None:
    echoed = client.completions.create(
        model="tiny", prompt="the quick brown", max_tokens=3, echo=True, **GREEDY
    )
    assert echoed.choices[0].text.startswith("the quick brown")
    plain = client.completions.create(
        model="tiny", prompt="the quick brown", max_tokens=3, logprobs=2, **GREEDY
    )
    logprobs = plain.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    # Log-probabilities travel with the text they produced: a token whose bytes the reply
    # dropped at its end (it never ends in U+FFFD), as a stop string's, has none.
    tokens = logprobs.tokens
    assert "".join(tokens) == plain.choices[0].text and 1 <= len(tokens) <= 3
    assert logprobs.text_offset == [sum(map(len, tokens[:i])) for i in range(len(tokens))]
    assert logprobs.top_logprobs is not None and all(len(t) == 2 for t in logprobs.top_logprobs)


def test_a_streamed_completion(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="tiny", prompt="the quick brown", max_tokens=5, stream=True, **GREEDY
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks)
    whole = client.completions.create(
        model="tiny", prompt="the quick brown", max_tokens=5, **GREEDY
    )
    assert text == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [[1, 2], []]}, "prompt[1]"),
        ({"prompt": [10**9]}, "prompt[0]"),
        ({"prompt": [[5], [10**9]]}, "prompt[1][0]"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "best_of": 2}, "best_of"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
        ({"prompt": {"a": 1}}, "prompt"),
    ],
)
def test_an_invalid_completion_field_is_named(
    server: Server, body: dict[str, Any], param: str
) -> None:
    assert refusal(server, body, "/v1/completions")["param"] == param


@pytest.mark.parametrize(
    "route", ["chat", "chat-stream", "completions", "chat_stream", "chat_stream-sse"]
)
def test_a_reply_cut_inside_a_character_never_shows_fffd(
    server: Server, tokenizer: Any, route: str
) -> None:
    # Byte-level BPE splits 龍 into its UTF-8 bytes; the reply is forced to its first byte
    # and cut there by the length limit. Its text is empty, on every route: the lone byte
    # is dropped, not shown as U+FFFD.
    first, *rest = tokenizer.encode("龍", add_special_tokens=False)
    assert rest and tokenizer.decode([first]) == "\ufffd"
    forced = {"logit_bias": {str(first): 100}}
    if route.startswith("chat_stream"):
        body: dict[str, Any] = {"user_input": "the quick brown fox"}
        body["generation_params"] = {**forced, "max_new_tokens": 1, "temperature": 0}
        headers = {"Accept": "text/event-stream"} if route.endswith("sse") else {}
        answer = httpx.post(
            f"{server.base_url}/chat_stream", json=body, headers=headers, timeout=30
        )
        assert answer.status_code == 200, answer.text
        if route.endswith("sse"):
            deltas = [
                json.loads(line[6:])["text"]
                for line in answer.text.splitlines()
                if line.startswith("data: ") and '"text"' in line
            ]
            assert "event: done" in answer.text and "".join(deltas) == ""
        else:
            assert answer.text == "<::EOS::>"
        return
    common = {"model": "tiny", "max_tokens": 1, "temperature": 0, **forced}
    if route == "completions":
        answer = post(server, "/v1/completions", {**common, "prompt": "the quick brown fox"})
        choice = answer.json()["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == ("", "length")
    elif route == "chat":
        answer = post(server, "/v1/chat/completions", {**common, "messages": PROMPT})
        choice = answer.json()["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == ("", "length")
    else:
        answer = post(
            server, "/v1/chat/completions", {**common, "messages": PROMPT, "stream": True}
        )
        assert "\ufffd" not in answer.text and "data: [DONE]" in answer.text
        chunks = [
            json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")
        ]
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert content == ""
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert answer.status_code == 200
