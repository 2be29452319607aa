"""vLLM's metric families from real traffic, through a real server on both loops: requests
by finished_reason, tokens per request, the KV usage while requests run, and the tokens of
requests whose clients left (a stream closed, a turn cut, a request gone while it waited)."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.metrics_core import Metric

from .conftest import Server, ServerFactory
from .test_load_control import load, wait_for
from .test_metrics import hist, parse, value

MODEL = "served-mock"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "tell me the long story"}]


def scrape(server: Server) -> dict[str, Metric]:
    with server.client() as client:
        response = client.get("/metrics")  # open: no role, no token
    assert response.status_code == 200
    return parse(response.text)


def counter(families: dict[str, Metric], name: str, **labels: str) -> float:
    return value(families, name, name, **labels)


def test_vllm_families_count_every_ended_request(
    start_server: ServerFactory, request: pytest.FixtureRequest
) -> None:
    server = start_server(
        options={
            "num_of_concurrent_executions": 2,
            "max_queue_size": 2,
            "served_model_name": MODEL,
            "mock_params": {"type": "long", "time_per_token_sec": 0.02},
        },
        app={"open_metrics": True},
        # A browser that leaves is cancelled at once, not kept for a resume.
        http={"resume_grace_sec": 0},
    )
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    request.addfinalizer(sdk.close)
    with server.client() as client:
        prompt_tokens = client.post("/tokenize", json={"messages": MESSAGES}).json()["count"]

    # A finished request, for the other reasons' series.
    finished = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert finished.usage is not None and finished.usage.completion_tokens == 3

    # Two clients take both slots, read a few deltas each, and leave mid-reply.
    stream = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = iter(stream)
    read = [next(chunks) for _ in range(6)]
    assert all(c.model == MODEL for c in read)
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as browser,
        browser.stream(
            "POST",
            "/chat_stream",
            json={"user_input": "a long story"},
            headers={"Accept": "text/event-stream"},
        ) as turn,
    ):
        lines = turn.iter_lines()
        deltas = 0
        while deltas < 5:
            deltas += next(lines).startswith("event: delta")
        # Both run: the KV they hold shows.
        running = scrape(server)
        assert counter(running, "chatstream_requests_running") == 2
        assert 0 < counter(running, "chatstream_kv_cache_usage_perc", model_name=MODEL) < 1
        # A third waits for a slot, and its client gives up before it gets one.
        body = {"model": MODEL, "messages": MESSAGES}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=0.5)
        wait_for(lambda: load(server) == (2, 0))
    stream.close()
    wait_for(lambda: load(server) == (0, 0))

    families = scrape(server)
    success = "chatstream_request_success_total"
    assert counter(families, success, model_name=MODEL, finished_reason="length") == 1
    assert counter(families, success, model_name=MODEL, finished_reason="abort") == 3
    assert counter(families, success, model_name=MODEL, finished_reason="stop") == 0
    assert counter(families, "chatstream_requests_total", outcome="cancelled") == 3
    # The cut requests' tokens count: generated so far (at least what the clients read),
    # and the prompts of the two that got a slot, not of the one that only waited.
    generated = counter(families, "chatstream_generated_tokens_total")
    assert generated >= 3 + (len(read) - 1) + deltas
    assert hist(families, "chatstream_request_generation_tokens", model_name=MODEL) == (
        generated,
        3,
    )
    prompts = counter(families, "chatstream_prompt_tokens_total")
    prompt_sum, prompt_count = hist(families, "chatstream_request_prompt_tokens", model_name=MODEL)
    assert (prompt_sum, prompt_count) == (prompts, 3)
    chat_turn_prompt = prompts - 2 * prompt_tokens
    assert 0 < chat_turn_prompt < prompt_tokens  # the turn's prompt, shorter than the messages
    for name in (
        "chatstream_request_prefill_time_seconds",
        "chatstream_request_decode_time_seconds",
        "chatstream_request_inference_time_seconds",
        "chatstream_request_time_per_output_token_seconds",
    ):
        assert hist(families, name, model_name=MODEL)[1] == 3, name
    assert counter(families, "chatstream_kv_cache_usage_perc", model_name=MODEL) == 0


def test_every_model_series_carries_the_served_name(start_server: ServerFactory) -> None:
    server = start_server(options={"served_model_name": MODEL}, app={"open_metrics": True})
    with server.client() as client:
        text = client.get("/metrics").text
    labelled = [line for line in text.splitlines() if "model_name=" in line]
    assert len(labelled) > 10
    assert all(f'model_name="{MODEL}"' in line for line in labelled), labelled
