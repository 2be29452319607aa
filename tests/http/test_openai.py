"""The official openai client against chatstream's OpenAI-compatible API, unmodified."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from chatstream.adapters.model import mock_texts

from .conftest import ServerFactory


def client_for(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0)


def test_non_streaming_and_streaming_completions(start_server: ServerFactory) -> None:
    server = start_server(options={"mock_params": {"type": "echo", "time_per_token_sec": 0}})
    client = client_for(server.base_url)
    models = client.models.list()
    assert [m.id for m in models.data] == ["mock"]
    messages: Any = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "say this back"},
    ]
    completion = client.chat.completions.create(
        model="mock", messages=messages, max_tokens=50, temperature=0.0, seed=3
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "say this back"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4  # three words and the end token
    stream = client.chat.completions.create(
        model="mock",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "say this back"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_max_tokens_and_stop(start_server: ServerFactory) -> None:
    server = start_server(options={"mock_params": {"type": "round", "time_per_token_sec": 0}})
    client = client_for(server.base_url)
    messages: Any = [{"role": "user", "content": "story"}]
    short = client.chat.completions.create(model="mock", messages=messages, max_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.choices[0].message.content == " ".join(mock_texts.ROUND_EN[0].split()[:3])
    stopped = client.chat.completions.create(model="mock", messages=messages, stop=["ships"])
    assert stopped.choices[0].message.content == mock_texts.ROUND_EN[0].split("ships")[0]
    assert stopped.choices[0].finish_reason == "stop"


def test_errors_are_openai_shaped(start_server: ServerFactory) -> None:
    server = start_server()
    client = client_for(server.base_url)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock", messages=[], max_tokens=5)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and "messages" in str(body.get("message"))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "x"}], n=17
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "x"}], temperature=-1
        )


def test_a_full_queue_is_a_429(start_server: ServerFactory) -> None:
    server = start_server(
        options={
            "num_of_concurrent_executions": 1,
            "max_queue_size": 0,
            "mock_params": {"type": "long", "time_per_token_sec": 0.02},
        }
    )
    client = client_for(server.base_url)
    stream = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "long"}], stream=True
    )
    next(iter(stream))  # the only slot is taken
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 429
    stream.close()


def test_a_client_leaving_a_non_streamed_completion_frees_its_slot(
    start_server: ServerFactory,
) -> None:
    import httpx

    from tests.http.test_load_control import load, wait_for

    server = start_server(
        options={
            "num_of_concurrent_executions": 1,
            "mock_params": {"type": "long", "time_per_token_sec": 0.02},
            "client_roles": {
                "user": {"apis": {"allow": "all", "auth_method": "nothing", "use_session": True}}
            },
        }
    )
    body = {"model": "mock", "messages": [{"role": "user", "content": "long"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=0.5)
    wait_for(lambda: load(server) == (0, 0))
    client = client_for(server.base_url)
    quick = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    assert quick.choices[0].finish_reason == "length"
    with server.client() as http:
        metrics = http.get("/metrics").text
    assert 'chatstream_requests_total{outcome="finished"} 1' in metrics
    assert 'chatstream_requests_total{outcome="cancelled"} 1' in metrics
