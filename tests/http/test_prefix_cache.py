"""Prefix reuse seen from the client, against a real server on both loops: the next turn of
a browser's conversation and an OpenAI client resending its history report cached prompt
tokens; ``/metrics`` counts them; ``prefix_cache=False`` turns it off. The mock backend
keeps what each slot holds and fails a request whose reuse does not match it, so every
turn here is also a check of the engine's bookkeeping."""

from __future__ import annotations

from typing import Any

import openai

from .conftest import Server, ServerFactory
from .test_original_api import parse_sse

MONITOR = {
    "user": {"apis": {"allow": "all", "auth_method": "nothing", "use_session": True}},
    "monitor": {
        "apis": {
            "allow": ["metrics", "get_load"],
            "auth_method": "header_phrase",
            "header_phrase": "let me see",
            "use_session": False,
        }
    },
}
MOCK = {"type": "round", "time_per_token_sec": 0.0}


def sse_turn(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/chat_stream", json=body, headers={"Accept": "text/event-stream"})
    assert response.status_code == 200, response.text
    events = dict(parse_sse(response.text))
    assert "error" not in events, events
    return events["done"]["usage"]  # type: ignore[no-any-return]


def metric_samples(server: Server) -> dict[str, float]:
    with server.client() as monitor:
        metrics = monitor.get("/metrics", headers={"X-ChatStream-Auth-Header": "let me see"})
    assert metrics.status_code == 200
    return {
        name: float(number)
        for name, number in (
            line.rsplit(" ", 1)
            for line in metrics.text.splitlines()
            if line.startswith("chatstream_")
        )
    }


def test_each_turn_of_a_browser_conversation_reuses_the_last(start_server: ServerFactory) -> None:
    server = start_server(options={"mock_params": MOCK, "client_roles": MONITOR})
    with server.client() as client:
        first = sse_turn(client, {"user_input": "hello"})
        assert first["cached_tokens"] == 0
        second = sse_turn(client, {"user_input": "and then?"})
        # At least the whole first prompt is the beginning of the second.
        assert first["prompt_tokens"] <= second["cached_tokens"] < second["prompt_tokens"]
        regenerated = sse_turn(client, {"user_input": None, "regenerate": True})
        assert regenerated["cached_tokens"] >= first["prompt_tokens"]
    with server.client() as other:
        assert sse_turn(other, {"user_input": "a stranger"})["cached_tokens"] < 40
    samples = metric_samples(server)
    hits = samples["chatstream_prefix_cache_hit_tokens_total"]
    assert hits >= second["cached_tokens"] + regenerated["cached_tokens"]
    assert samples["chatstream_prefix_cache_queried_tokens_total"] > hits


def test_an_openai_client_resending_its_history_gets_cached_tokens(
    start_server: ServerFactory,
) -> None:
    server = start_server(options={"mock_params": MOCK})
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0) as client:
        first, usage = _two_requests(client)
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens <= usage.prompt_tokens_details.cached_tokens
    assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens


def _two_requests(client: openai.OpenAI) -> tuple[Any, Any]:
    """A completion, then a streamed one that resends the history: the second's usage."""
    messages: list[Any] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "tell me a story"},
    ]
    first = client.chat.completions.create(model="mock", messages=messages)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "go on"},
    ]
    stream = client.chat.completions.create(
        model="mock", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    return first, [chunk.usage for chunk in stream if chunk.usage is not None][-1]


def test_without_the_prefix_cache_nothing_is_reused(start_server: ServerFactory) -> None:
    server = start_server(options={"mock_params": MOCK, "prefix_cache": False})
    with server.client() as client:
        sse_turn(client, {"user_input": "hello"})
        assert sse_turn(client, {"user_input": "and then?"})["cached_tokens"] == 0


def test_conversations_no_slot_holds_come_back_from_host_memory(
    start_server: ServerFactory,
) -> None:
    # One slot and three browsers taking turns: each turn writes over another browser's
    # conversation, which waits in host memory for its next turn.
    server = start_server(
        options={
            "mock_params": MOCK,
            "client_roles": MONITOR,
            "num_of_concurrent_executions": 1,
        }
    )
    browsers = [server.client() for _ in range(3)]
    previous: list[dict[str, Any]] = []
    try:
        for turn in range(2):
            for index, browser in enumerate(browsers):
                usage = sse_turn(browser, {"user_input": f"browser {index} says hello {turn}"})
                if turn:
                    # Its whole last prompt came back from host memory.
                    assert usage["cached_tokens"] >= previous[index]["prompt_tokens"]
                    previous[index] = usage
                else:
                    previous.append(usage)
    finally:
        for browser in browsers:
            browser.close()
    samples = metric_samples(server)
    assert samples["chatstream_prefix_cache_restored_tokens_total"] >= sum(
        p["cached_tokens"] for p in previous[:2]
    )
    # The mock counts 1,024 bytes a token: two conversations are stored.
    stored = samples["chatstream_prefix_cache_stored_tokens"]
    assert stored > 0 and samples["chatstream_prefix_cache_stored_bytes"] == 1024 * stored


def test_with_no_host_memory_a_given_up_conversation_is_prefilled_again(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        options={
            "mock_params": MOCK,
            "client_roles": MONITOR,
            "num_of_concurrent_executions": 1,
            "prefix_cache_mb": 0,
        }
    )
    with server.client() as first, server.client() as second:
        sse_turn(first, {"user_input": "the first browser says hello"})
        sse_turn(second, {"user_input": "the second browser says hello"})
        again = sse_turn(first, {"user_input": "and again"})
    assert again["cached_tokens"] < again["prompt_tokens"] // 2  # a shared opening at most
    samples = metric_samples(server)
    assert samples["chatstream_prefix_cache_restored_tokens_total"] == 0
    assert samples["chatstream_prefix_cache_stored_bytes"] == 0
