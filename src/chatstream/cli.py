"""The command line: ``chatstream serve`` (HTTP server + web UI) and ``chatstream chat``
(console chat). Also ``python -m chatstream``.

With no ``--model``, both use the embedded SmolLM2-135M-Instruct (see ``chatstream.embedded``).
Every option can also come from a config file (``--config file.toml`` or ``.json``), whose
keys are the long option names with underscores; options on the command line win.

Secrets never go on the command line (where ``ps`` shows them): the API key comes from the
environment variable ``CHATSTREAM_API_KEY`` or a file (``--api-key-file``), the metrics token
from ``CHATSTREAM_METRICS_TOKEN`` or ``--metrics-token-file``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

_DEFAULTS: dict[str, Any] = {
    "model": None,
    "mock": False,
    "mock_type": "round",
    "mock_time_per_token": 0.05,
    "device": "cpu",
    "concurrency": 2,
    "queue_size": 5,
    "host": "127.0.0.1",
    "port": 8000,
    "loop": "asyncio",
    "max_new_tokens": 256,
    "context_len": 1024,
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.9,
    "repetition_penalty": None,
    "secret_key": None,
    "session_store": None,
    "too_many_requests_as_429": True,
    "drain_timeout": 30.0,
    "header_timeout": 10.0,
    "body_timeout": 30.0,
    "resume_grace": 5.0,
    "max_connections": 1000,
    "rate_limit_per_address": None,
    "rate_limit_per_session": None,
    "prefix_cache": True,
    "prefix_cache_mb": 1024,
    "quantize": "auto",
    "cuda_graphs": "auto",
    "torch_threads": None,
    "system": None,
    "lang": None,
    "served_model_name": None,
    "api_key_file": None,
    "cors_origin": None,
    "metrics_token_file": None,
}

#: The environment variables that hold the secrets of ``serve``.
API_KEY_ENV = "CHATSTREAM_API_KEY"
METRICS_TOKEN_ENV = "CHATSTREAM_METRICS_TOKEN"


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="PATH",
        help="a local HuggingFace model folder, or a .gguf file; default: the embedded "
        "SmolLM2-135M-Instruct (converted once into the cache on first use)",
    )
    group.add_argument(
        "--mock", action="store_true", help="no model: canned replies (for UI work and tests)"
    )
    group.add_argument(
        "--mock-type", choices=["round", "long", "echo"], help="the mock's replies (round)"
    )
    group.add_argument(
        "--mock-time-per-token", type=float, metavar="SEC", help="the mock's pace (0.05)"
    )
    group.add_argument("--device", help="cpu, cuda, cuda:N or mps (cpu)")
    group.add_argument(
        "--torch-threads", type=int, metavar="N", help="torch threads in the model thread"
    )
    group.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_false",
        default=None,
        help="prefill every prompt whole instead of reusing the KV that slots keep of "
        "earlier turns",
    )
    group.add_argument(
        "--prefix-cache-mb",
        type=int,
        metavar="MIB",
        help="host memory for the KV of conversations no slot holds any more; 0 keeps none (1024)",
    )
    group.add_argument(
        "--quantize",
        choices=["auto", "int8", "bf16", "none"],
        help="int8: int8 weights and activations on a CPU; bf16: bfloat16 weights; none: "
        "the weights as loaded; auto: int8 for the embedded model on a CPU with AVX512-VNNI, where "
        "it passed the quality gate, none otherwise (auto)",
    )
    graphs = group.add_mutually_exclusive_group()
    graphs.add_argument(
        "--cuda-graphs",
        dest="cuda_graphs",
        action="store_const",
        const=True,
        default=None,
        help="replay decode steps from CUDA graphs (the default on a CUDA device)",
    )
    graphs.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_const",
        const=False,
        help="decode eagerly on a CUDA device too",
    )
    gen = parser.add_argument_group("generation defaults")
    gen.add_argument("--max-new-tokens", type=int, metavar="N", help="tokens per reply (256)")
    gen.add_argument("--context-len", type=int, metavar="N", help="prompt + reply tokens (1024)")
    gen.add_argument("--temperature", type=float, help="0 is greedy (0.7)")
    gen.add_argument("--top-k", type=int, help="keep the k likeliest tokens (50)")
    gen.add_argument("--top-p", type=float, help="nucleus sampling (0.9)")
    gen.add_argument("--repetition-penalty", type=float, help="off by default")
    gen.add_argument("--system", metavar="TEXT", help="a system prompt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatstream",
        description="Streaming chat for HuggingFace causal LMs, under load control.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the web UI and the HTTP APIs")
    serve.add_argument("--config", metavar="FILE", help="TOML or JSON file of options")
    _model_options(serve)
    load = serve.add_argument_group("load control")
    load.add_argument(
        "--concurrency", type=int, metavar="N", help="replies generated at once, batched (2)"
    )
    load.add_argument(
        "--queue-size", type=int, metavar="M", help="requests that may wait; more get 429 (5)"
    )
    load.add_argument(
        "--original-too-many-requests",
        dest="too_many_requests_as_429",
        action="store_false",
        default=None,
        help="answer a full queue with HTTP 200 and a JSON error, as the original did",
    )
    server = serve.add_argument_group("server")
    server.add_argument("--host", help="interface to listen on (127.0.0.1)")
    server.add_argument("--port", type=int, help="port (8000)")
    server.add_argument("--loop", choices=["asyncio", "trio"], help="event loop (asyncio)")
    server.add_argument(
        "--secret-key",
        help="signs session cookies; needed to share sessions across processes or restarts "
        "(default: a random key per start)",
    )
    server.add_argument(
        "--session-store",
        metavar="URL",
        help="keep sessions in Redis, shared by every process given the same URL and "
        "--secret-key: redis://HOST:PORT/DB (default: in this process's memory)",
    )
    server.add_argument(
        "--drain-timeout", type=float, metavar="SEC", help="seconds streams get at shutdown (30)"
    )
    server.add_argument(
        "--header-timeout",
        type=float,
        metavar="SEC",
        help="seconds a client gets to send a request's headers; then it is closed (10)",
    )
    server.add_argument(
        "--body-timeout",
        type=float,
        metavar="SEC",
        help="seconds a client gets to send a request's body; then 408 (30)",
    )
    server.add_argument(
        "--resume-grace",
        type=float,
        metavar="SEC",
        help="seconds a streamed turn goes on after its client left, for a reconnect to "
        "resume it; 0 cancels at once (5)",
    )
    server.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open connections at once (asyncio); more get 503 (1000, below the fd limit)",
    )
    server.add_argument(
        "--rate-limit-per-address",
        metavar="RATE",
        help="requests one client address may make, e.g. '60/minute' or '5/second;300/hour'; "
        "more get 429 (none)",
    )
    server.add_argument(
        "--rate-limit-per-session",
        metavar="RATE",
        help="the same budget for each browser session (none)",
    )
    server.add_argument("--lang", choices=["en", "ja"], help="web UI language (the browser's)")
    openai = serve.add_argument_group("OpenAI-compatible API and operations")
    openai.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the model's name in /v1/models and in every response's 'model' (the model "
        "folder's name)",
    )
    openai.add_argument(
        "--api-key-file",
        metavar="PATH",
        help=f"a file holding the key every /v1/ route then needs as 'Authorization: Bearer "
        f"<key>'; or set {API_KEY_ENV} (no key: open)",
    )
    openai.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="let pages of this origin call the server, e.g. https://app.example.com; "
        "repeat for more, '*' for any (none: same-origin only)",
    )
    openai.add_argument(
        "--metrics-token-file",
        metavar="PATH",
        help=f"a file holding the token /metrics then needs as 'Authorization: Bearer "
        f"<token>'; or set {METRICS_TOKEN_ENV} (none: /metrics is open)",
    )

    chat = commands.add_parser("chat", help="chat in the terminal")
    chat.add_argument("--config", metavar="FILE", help="TOML or JSON file of options")
    _model_options(chat)
    return parser


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the config file, then the command line."""
    options = dict(_DEFAULTS)
    if args.config:
        options.update(_read_config(Path(args.config)))
    for name, value in vars(args).items():
        if name == "prefix_cache_mb" and value is not None:
            options[name] = value  # 0 is a value here, not an absent flag
        elif name not in ("command", "config") and value not in (None, False):
            options[name] = value
        elif name in ("too_many_requests_as_429", "prefix_cache", "cuda_graphs") and value is False:
            options[name] = False
    return options


def _read_config(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: the config must be a table/object of options")
    config = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(config) - set(_DEFAULTS))
    if unknown:
        raise SystemExit(f"{path}: unknown options {unknown}; known: {sorted(_DEFAULTS)}")
    return config


def build_chat_stream(options: dict[str, Any]) -> Any:
    """A ChatStream as the options ask for, with the model loaded (progress shown)."""
    from chatstream import ChatStream

    prompt_class = None
    common: dict[str, Any] = {
        "num_of_concurrent_executions": options["concurrency"],
        "max_queue_size": options["queue_size"],
        "too_many_request_as_http_error": options["too_many_requests_as_429"],
        "max_new_tokens": options["max_new_tokens"],
        "context_len": options["context_len"],
        "temperature": options["temperature"],
        "top_k": options["top_k"],
        "top_p": options["top_p"],
        "repetition_penalty": options["repetition_penalty"],
        "torch_threads": options["torch_threads"],
        "prefix_cache": options["prefix_cache"],
        "prefix_cache_mb": options["prefix_cache_mb"],
        "served_model_name": options["served_model_name"],
    }
    if options["mock"]:
        mock_params = {
            "type": options["mock_type"],
            "time_per_token_sec": options["mock_time_per_token"],
        }
        return ChatStream(use_mock_response=True, mock_params=mock_params, **common)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, tokenizer = _load(options)
    if options["system"]:
        prompt_class = _with_system(tokenizer, options["system"])
    quantize = options["quantize"]
    if quantize == "auto":
        from chatstream.adapters.model.quantization import auto_quantize

        quantize = auto_quantize(device=options["device"], embedded=options["model"] is None)
    return ChatStream(
        model=model,
        tokenizer=tokenizer,
        device=options["device"],
        chat_prompt_clazz=prompt_class,
        quantize=quantize,
        cuda_graphs=options["cuda_graphs"],
        **common,
    )


def _load(options: dict[str, Any]) -> tuple[Any, Any]:
    if options["torch_threads"]:
        import torch

        torch.set_num_threads(options["torch_threads"])
    model_path = options["model"]
    if model_path is None:
        from chatstream.embedded import load_embedded_model

        return load_embedded_model(device=options["device"])
    from chatstream.adapters.model.loading import load_model

    path = Path(model_path)
    if path.suffix == ".gguf":
        return load_model(path.parent, device=options["device"], gguf_file=path.name)
    return load_model(path, device=options["device"])


def _with_system(tokenizer: Any, system: str) -> Any:
    from chatstream.adapters.model.chat_template import chat_template_prompt_class

    base = chat_template_prompt_class(tokenizer)

    class WithSystem(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.set_system(system)

    return WithSystem


def serve(options: dict[str, Any]) -> None:
    from chatstream.adapters.http.app import create_app
    from chatstream.adapters.http.common import HttpOptions
    from chatstream.console import weights_label
    from chatstream.core import ConfigError
    from chatstream.server import serve as run_server

    try:  # before the model loads: a typo must not cost a minute
        http_options = HttpOptions(
            drain_timeout_sec=options["drain_timeout"],
            body_timeout_sec=options["body_timeout"],
            resume_grace_sec=options["resume_grace"],
            rate_limit_per_address=options["rate_limit_per_address"],
            rate_limit_per_session=options["rate_limit_per_session"],
        )
    except ConfigError as error:
        raise SystemExit(f"chatstream serve: {error}") from None
    api_key = _secret(options["api_key_file"], "--api-key-file", API_KEY_ENV)
    metrics_token = _secret(
        options["metrics_token_file"], "--metrics-token-file", METRICS_TOKEN_ENV
    )
    cors_origins = _origins(options["cors_origin"])
    store = _session_store(options["session_store"])
    chat_stream = build_chat_stream(options)
    url = f"http://{options['host']}:{options['port']}/"
    ui = {"lang": options["lang"]} if options["lang"] else None
    app = create_app(
        chat_stream,
        secret_key=options["secret_key"],
        store=store,
        http_options=http_options,
        web_ui_params=ui,
        api_key=api_key,
        cors_origins=cors_origins,
        # As vLLM's: scrapers need no role (the web UI's browsers have none for it).
        open_metrics=True,
        metrics_token=metrics_token,
        on_ready=lambda: print(
            f"chatstream: serving {chat_stream.model_id} ({options['loop']}, "
            f"{weights_label(chat_stream)}); "
            f"open {url} in a browser. Ctrl+C stops.",
            file=sys.stderr,
            flush=True,
        ),
    )
    run_server(
        app,
        host=options["host"],
        port=options["port"],
        loop=options["loop"],
        drain_timeout=options["drain_timeout"],
        header_timeout=options["header_timeout"],
        max_connections=options["max_connections"],
    )


def _session_store(url: object) -> Any:
    """The store ``--session-store`` names: None (memory) or a :class:`RedisStore`."""
    if url is None:
        return None
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise SystemExit(f"chatstream serve: --session-store must be a redis:// URL, not {url!r}")
    from chatstream.adapters.http.redis_store import RedisStore
    from chatstream.core import ConfigError

    try:
        return RedisStore(url)
    except ConfigError as error:
        raise SystemExit(f"chatstream serve: {error}") from None


def _secret(path: str | None, flag: str, variable: str) -> str | None:
    """A secret from the file ``path`` names (its text, surrounding whitespace taken off),
    else from the environment variable; None when neither gives one."""
    if path is None:
        return os.environ.get(variable, "").strip() or None
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise SystemExit(f"chatstream serve: {flag}: cannot read {path}: {error}") from None
    if not secret:
        raise SystemExit(f"chatstream serve: {flag}: {path} is empty")
    return secret


def _origins(value: object) -> list[str]:
    """``--cors-origin`` values (a config file may give one string or a list)."""
    if value is None:
        return []
    origins = [value] if isinstance(value, str) else value
    if not isinstance(origins, list) or not all(isinstance(o, str) and o for o in origins):
        raise SystemExit(f"chatstream serve: cors_origin: not a list of origins: {value!r}")
    return origins


def chat(options: dict[str, Any]) -> None:
    from chatstream.console import run_console

    run_console(build_chat_stream(options))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    options = resolve_options(args)
    if args.command == "serve":
        serve(options)
    else:
        chat(options)


if __name__ == "__main__":
    main()
