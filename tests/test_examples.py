"""Every example runs, so none can rot. The embedded model is swapped for the tiny test model
(same code path: a real transformers model and tokenizer with a chat template)."""

from __future__ import annotations

import importlib
import io
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import torch
from starlette.testclient import TestClient

from tests.http.conftest import free_port
from tests.tiny_model import build_tiny_model, load_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return load_tiny_model(build_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def embedded_is_tiny(tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import chatstream.embedded

    monkeypatch.setattr(chatstream.embedded, "load_embedded_model", lambda **_: tiny)
    yield
    for name in list(sys.modules):
        if name.startswith("examples."):
            del sys.modules[name]


def fresh(module: str) -> Any:
    sys.modules.pop(module, None)
    return importlib.import_module(module)


@pytest.mark.usefixtures("embedded_is_tiny")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_starlette_app(backend: str) -> None:
    app = fresh("examples.starlette_app").app
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/").status_code == 200
        with client.stream("POST", "/chat_stream", json={"user_input": "hello"}) as response:
            assert response.status_code == 200
            assert "<::EOS::>" in response.read().decode()


@pytest.mark.usefixtures("embedded_is_tiny")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fastapi_app_mounts_the_routes(backend: str) -> None:
    app = fresh("examples.fastapi_app").app
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        assert client.get("/status").json() == {"running": 0, "waiting": 0}
        assert client.get("/chat/get_load").status_code == 200
        assert client.get("/chat/").status_code == 200
        response = client.post(
            "/chat/chat_stream", json={"user_input": "hi"}, headers={"Accept": "text/event-stream"}
        )
        assert "event: done" in response.text


@pytest.mark.usefixtures("embedded_is_tiny")
def test_trio_app_under_hypercorn() -> None:
    import trio

    example = fresh("examples.trio_hypercorn")
    port = free_port()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(example.main, port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(200):
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
                response = await client.post(
                    "/chat_stream",
                    json={"user_input": "hi"},
                    headers={"Accept": "text/event-stream"},
                )
                assert "event: done" in response.text
            nursery.cancel_scope.cancel()

    trio.run(run)


@pytest.mark.usefixtures("embedded_is_tiny")
def test_console_chat(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nこんにちは\nexit\n"))
    anyio.run(fresh("examples.console_chat").main)
    out = capsys.readouterr().out
    # Two replies of the (random) tiny model, each ended by the newline of its "end" update.
    assert out.strip() and out.endswith("\n") and out.count("\n") >= 2


def test_custom_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(fresh("examples.custom_prompt").main)
    out = capsys.readouterr().out
    assert "reply: Say hello." in out
    assert "### Instruction:\nSay hello.\n\n### Response:\nSay hello.\n" in out


def test_every_example_is_tested() -> None:
    examples = {p.stem for p in pathlib.Path("examples").glob("*.py") if p.stem != "__init__"}
    tested = {
        "starlette_app",
        "fastapi_app",
        "trio_hypercorn",
        "console_chat",
        "custom_prompt",
        "sync_engine",
        "migrate_from_original",
    }
    assert examples <= tested, examples - tested
