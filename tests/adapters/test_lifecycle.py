"""Where a ChatStream lives: plain anyio.run, a Starlette lifespan; what it leaves alone."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from chatstream import ChatStream
from chatstream.adapters.model import mock_texts
from chatstream.log_messages import resolve_locale

SCRIPT = textwrap.dedent(
    """
    import sys, anyio
    from chatstream import ChatStream

    async def main():
        async with ChatStream(use_mock_response=True,
                              mock_params={"type": "echo", "time_per_token_sec": 0}) as cs:
            conversation = cs.new_conversation()
            print("".join([d async for d in cs.chat(conversation, "plain anyio run")]))

    anyio.run(main, backend=sys.argv[1])
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_plain_anyio_run(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "plain anyio run"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_starlette_lifespan(backend: Literal["asyncio", "trio"]) -> None:
    chat_stream = ChatStream(use_mock_response=True, mock_params={"time_per_token_sec": 0})
    handler_before = signal.getsignal(signal.SIGINT)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with chat_stream:
            yield

    async def hello(request: Request) -> PlainTextResponse:
        conversation = chat_stream.new_conversation()
        text = "".join([d async for d in chat_stream.chat(conversation, "hi")])
        return PlainTextResponse(text)

    app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
    with TestClient(app, backend=backend) as client:
        assert client.get("/").text == mock_texts.ROUND_EN[0]
        assert chat_stream.running
        # No SIGINT hijacking (the original turned Ctrl+C into os._exit(0)).
        assert signal.getsignal(signal.SIGINT) is handler_before
    assert not chat_stream.running


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ja", "ja"),
        ("ja_JP", "ja"),
        ("ja-JP.UTF-8", "ja"),
        ("Japanese_Japan", "ja"),
        ("en", "en"),
        ("fr", "en"),
        ("", "en"),
    ],
)
def test_locale_names(given: str, expected: str) -> None:
    assert resolve_locale(given) == expected


def test_locale_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_locale(None) == "en"
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    assert resolve_locale(None) == "ja"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_japanese_log_messages(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    import anyio

    async def main() -> None:
        async with ChatStream(use_mock_response=True, locale="ja"):
            pass

    with caplog.at_level(logging.INFO, logger="chatstream"):
        anyio.run(main, backend=backend)
    assert any("準備完了" in r.getMessage() for r in caplog.records)
    assert any("停止しました" in r.getMessage() for r in caplog.records)
