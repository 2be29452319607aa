"""The optional per-client rate limit, through a real server on both loops: budgets by
address and by session, 429 with Retry-After in each API's error shape, probes never
limited, refusals that cost nothing and are summarized in the log."""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from chatstream.adapters.http.common import HttpOptions
from chatstream.core import ConfigError

from .conftest import ServerFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client side; the server runs both loops


async def test_an_address_over_its_budget_gets_429_with_retry_after(
    start_server: ServerFactory,
) -> None:
    server = start_server(http={"rate_limit_per_address": "5/minute"})
    async with server.async_client() as client:
        for _ in range(5):
            response = await client.post("/chat_stream", json={"user_input": "hi"})
            assert response.status_code == 200, response.text
        refused = [await client.post("/chat_stream", json={"user_input": "hi"}) for _ in range(20)]
        assert {r.status_code for r in refused} == {429}
        body = refused[0].json()
        assert body["error"] == "rate_limited"
        assert 1 <= int(refused[0].headers["retry-after"]) <= 60
        # Its body unread, the connection carries no further request: the client is told.
        assert {r.headers.get("connection") for r in refused} == {"close"}
        # Probes and scrapers are never limited.
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code != 429  # (403: the role decides)
        # Every other route is; a refusal without a body keeps the connection.
        get_load = await client.get("/get_load")
        assert get_load.status_code == 429
        assert get_load.headers.get("connection") != "close"
    # Twenty refusals, one line in the log.
    lines = [line for line in server.log_text().splitlines() if "rate limit" in line]
    assert len(lines) == 1, lines


async def test_the_openai_api_refuses_in_its_own_error_shape(start_server: ServerFactory) -> None:
    server = start_server(http={"rate_limit_per_address": "2/minute"})
    client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "hi"}
    ]
    for _ in range(2):
        await client.chat.completions.create(model="mock", messages=messages)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="mock", messages=messages)
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["retry-after"].isdigit()
    await client.close()


async def test_each_session_has_its_own_budget(start_server: ServerFactory) -> None:
    server = start_server(http={"rate_limit_per_session": "3/minute"})
    async with server.async_client() as first, server.async_client() as second:
        # The first request has no session yet (it creates one): only the next ones count.
        statuses = [
            (await first.post("/chat_stream", json={"user_input": "hi"})).status_code
            for _ in range(5)
        ]
        assert statuses == [200, 200, 200, 200, 429]
        # Same address, another browser: untouched by the first one's budget.
        for _ in range(4):
            response = await second.post("/chat_stream", json={"user_input": "hi"})
            assert response.status_code == 200
    # The budget follows the session, not the connection.
    async with server.async_client(cookies=first.cookies) as again:
        assert (await again.post("/chat_stream", json={"user_input": "x"})).status_code == 429


async def test_a_refused_request_creates_no_session_and_spends_no_budget(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        http={"rate_limit_per_address": "3/minute", "rate_limit_per_session": "1/minute"}
    )
    async with server.async_client() as client:
        assert (await client.post("/chat_stream", json={"user_input": "a"})).status_code == 200
        assert client.cookies  # the session exists now
        assert (await client.post("/chat_stream", json={"user_input": "b"})).status_code == 200
        # The session's budget is spent: refused, and the address budget is not charged.
        refused = await client.post("/chat_stream", json={"user_input": "c"})
        assert refused.status_code == 429
        assert "set-cookie" not in refused.headers
    async with httpx.AsyncClient(base_url=server.base_url) as cookieless:
        # One request of the address budget is left (two were spent, not three).
        response = await cookieless.post("/chat_stream", json={"user_input": "d"})
        assert response.status_code == 200
        assert (await cookieless.post("/clear_context")).status_code == 429


@pytest.mark.parametrize("field", ["rate_limit_per_address", "rate_limit_per_session"])
@pytest.mark.parametrize("bad", ["sixty", "0/minute", "5 per fortnight"])
def test_a_bad_rate_is_a_config_error_naming_the_field(field: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=field) as error:
        HttpOptions(**{field: bad})  # type: ignore[arg-type]
    assert error.value.option == field


def test_the_cli_refuses_a_bad_rate_before_loading_anything() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatstream",
            "serve",
            "--mock",
            "--rate-limit-per-address",
            "lots",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "rate_limit_per_address" in result.stderr
    assert "Traceback" not in result.stderr
