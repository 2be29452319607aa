"""The reliability suite's load cases against a real server process on both loops: a burst
with exact admission counts and a summarized log, and a disconnect storm over the three
stream formats that leaves nothing running or waiting."""

from __future__ import annotations

import http.cookiejar
import pathlib
import random

import anyio
import httpx
import pytest

from .conftest import Server, ServerFactory

pytestmark = pytest.mark.anyio

BURST = 300


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client side; the server runs both loops (see the loop fixture)


def _load(server: Server) -> tuple[int, int]:
    worker = httpx.get(f"{server.base_url}/get_load", timeout=10).json()["chatstream_workers"][0]
    return worker["processing"], worker["waiting"]


async def test_a_burst_gets_exactly_n_plus_m_streams_and_one_log_line(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        options={
            "num_of_concurrent_executions": 2,
            "max_queue_size": 5,
            "too_many_request_as_http_error": True,
            "mock_params": {"type": "long", "time_per_token_sec": 0.05},
        }
    )
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=BURST + 10)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
        everyone_in = anyio.Event()

        async def one() -> None:
            # No cookie: each request is its own browser.
            async with client.stream("POST", "/chat_stream", json={"user_input": "hi"}) as r:
                statuses.append(r.status_code)
                if len(statuses) == BURST:
                    everyone_in.set()
                await everyone_in.wait()  # the accepted hold their places until the end

        async with anyio.create_task_group() as tg:
            for _ in range(BURST):
                tg.start_soon(one)
            with anyio.fail_after(60):
                await everyone_in.wait()
            tg.cancel_scope.cancel()
    assert (statuses.count(200), statuses.count(429)) == (7, BURST - 7)
    with anyio.fail_after(10):
        while _load(server) != (0, 0):  # noqa: ASYNC110 (another process's state)
            await anyio.sleep(0.05)
    server.stop()
    log = server.log_text()
    assert log.count("request rejected") == 1, log  # the rest are counted, not each logged


FORMATS = ["original", "sse", "openai"]


async def test_a_disconnect_storm_leaves_nothing_running_or_waiting(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        options={
            "num_of_concurrent_executions": 4,
            "max_queue_size": 100,
            "too_many_request_as_http_error": True,
            "mock_params": {"type": "long", "time_per_token_sec": 0.01},
        }
    )
    rng = random.Random(20261202)
    outcomes: dict[str, int] = {}
    limits = httpx.Limits(max_connections=64)
    # Every request is its own browser: no cookie is kept.
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=60, limits=limits, cookies=no_cookies
    ) as client:

        async def one(index: int) -> None:
            fmt = FORMATS[index % 3]
            if fmt == "openai":
                body = {
                    "model": "m",
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                }
                url, headers = "/v1/chat/completions", {}
            else:
                body, url = {"user_input": "x"}, "/chat_stream"
                headers = {"Accept": "text/event-stream"} if fmt == "sse" else {}
            # Leave at a random moment: while queued, mid-stream, or right away.
            with anyio.move_on_after(rng.uniform(0.0, 0.6)):
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    outcomes[str(response.status_code)] = (
                        outcomes.get(str(response.status_code), 0) + 1
                    )
                    async for _ in response.aiter_raw():
                        pass

        async with anyio.create_task_group() as tg:
            for index in range(500):
                tg.start_soon(one, index)
                await anyio.sleep(0.002)
    with anyio.fail_after(20):
        while _load(server) != (0, 0):  # noqa: ASYNC110 (another process's state)
            await anyio.sleep(0.05)
    assert set(outcomes) <= {"200", "429"}, outcomes
    with server.client() as other:  # the server still serves, and whole replies
        assert other.post("/chat_stream", json={"user_input": "hi"}).text.endswith("<::EOS::>")
    server.stop()
    assert "Traceback" not in server.log_text()


def _rss_mib(server: Server) -> float:
    status = pathlib.Path(f"/proc/{server.process.pid}/status").read_text(encoding="ascii")
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


#: RSS may grow this much (MiB) between the end of the warm-up and the end of the soak.
SOAK_RSS_BOUND_MIB = 16.0


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_3000_turn_soak_stays_within_its_memory_bound(start_server: ServerFactory) -> None:
    server = start_server(
        options={"mock_params": {"type": "round", "time_per_token_sec": 0.0}},
    )
    sessions = [server.client() for _ in range(10)]
    try:
        warm_rss = 0.0
        for turn in range(3000):
            client = sessions[turn % len(sessions)]
            text = client.post("/chat_stream", json={"user_input": f"turn {turn}"}).text
            assert text.endswith("<::EOS::>"), text
            if turn == 999:  # histories are at their cap by now
                warm_rss = _rss_mib(server)
        growth = _rss_mib(server) - warm_rss
        assert growth < SOAK_RSS_BOUND_MIB, f"RSS grew {growth:.1f} MiB over 2,000 turns"
    finally:
        for client in sessions:
            client.close()
