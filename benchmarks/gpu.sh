#!/usr/bin/env bash
# Every GPU scenario in one run, on a bare GPU machine with the repo's working tree.
#
#   benchmarks/gpu.sh [OUT_DIR]              # default: $OUT, else benchmarks/results/gpu-<time>
#   benchmarks/gpu.sh --cpu-dry-run [OUT_DIR]  # the same path at toy size on a CPU
#
# Sets itself up: a venv that sees the machine's own CUDA torch (--system-site-packages;
# torch is never pinned here, unlike the CPU install), the project installed in it without
# touching torch, and the server's pure-Python dependencies from benchmarks/wheels/ when that
# folder exists (machines without a registry: fill it with benchmarks/fetch_gpu_wheels.sh),
# else from the package index. Then runs `python -m benchmarks.run --gpu`: a random-weight
# model of TinyLlama-1.1B's shape in bf16, chatstream over HTTP at C = 1, 8, 32, 128 with CUDA
# graphs, the original-style interleaved batch-1 loop, batched generate, the lean batched step
# and the physical limit (weights bytes / HBM bandwidth), then chatstream eager (no graphs) at
# the same C, each with its event-loop lag p99, within a time budget (whole script under
# 8 minutes). Writes results.jsonl, table.md, plot.png and servers.log into OUT_DIR.
set -uo pipefail

dry_run=""
out_dir=""
for arg in "$@"; do
    case "$arg" in
        --cpu-dry-run) dry_run="--cpu-dry-run" ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) out_dir="$arg" ;;
    esac
done

started=$(date +%s)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out_dir="${out_dir:-${OUT:-$root/benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$out_dir"
budget="${BENCH_BUDGET_S:-360}"    # seconds of scenarios; setup and the last one come on top
venv="${BENCH_VENV:-/tmp/chatstream-gpu-venv}"
wheels="$root/benchmarks/wheels"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export BENCH_SCRATCH="${BENCH_SCRATCH:-/tmp/chatstream-bench}"
export CHATSTREAM_CACHE="${CHATSTREAM_CACHE:-$BENCH_SCRATCH/cache}"

say() { echo "[gpu.sh $(( $(date +%s) - started ))s] $*" >&2; }

if [[ -n "$dry_run" && -n "${BENCH_PYTHON:-}" ]]; then
    py="$BENCH_PYTHON"      # a ready venv (the project's .venv on a CPU machine)
    say "dry run with $py"
else
    base="${BENCH_BASE_PYTHON:-python3}"
    if [[ ! -x "$venv/bin/python" ]]; then
        say "creating $venv (sees $base's packages: its torch, transformers, tokenizers)"
        "$base" -m venv --system-site-packages "$venv" || exit 1
        # When $base is itself a venv (the GPU image's python3 is /opt/torch/.venv), the
        # flag shows the interpreter's own site-packages, not that venv's: a .pth adds them.
        purelib=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        "$base" -c "import site, sys; sys.prefix != sys.base_prefix and print('\n'.join(site.getsitepackages()))" \
            > "$purelib/_chatstream_bench_base.pth"
    fi
    py="$venv/bin/python"
    pip=("$py" -m pip install -q)

    # torch: the machine's own (CUDA) build; install one only if there is none.
    if ! "$py" -c "import torch, transformers, tokenizers, safetensors, jinja2" 2>/dev/null; then
        say "no torch/transformers here: installing them from the index (torch unpinned)"
        "${pip[@]}" ${BENCH_TORCH_SPEC:-torch} "transformers>=5,<6" tokenizers safetensors jinja2 || exit 1
    fi
    if [[ -z "$dry_run" ]] && ! "$py" -c "import torch; assert torch.cuda.is_available()"; then
        say "torch sees no GPU; use --cpu-dry-run on a CPU machine"; exit 1
    fi

    # The server's dependencies, pure Python: local wheels first, then the index.
    need=$("$py" - <<'PY'
import importlib.metadata as md
need = []
for name, minimum in (("starlette", (1, 0)), ("uvicorn", (0, 30)), ("anyio", (4, 11)), ("httpx", (0, 27))):
    try:
        version = tuple(int(p) for p in md.version(name).split(".")[:2])
    except md.PackageNotFoundError:
        version = (0, 0)
    if version < minimum:
        need.append(name)
print(" ".join(need))
PY
)
    if [[ -n "$need" ]]; then
        say "installing $need"
        pins=()
        for name in $need; do
            case "$name" in
                starlette) pins+=("starlette==1.10.0") ;;
                uvicorn) pins+=("uvicorn==0.54.0") ;;
                anyio) pins+=("anyio==4.16.0" "typing_extensions>=4.16.0") ;;
                httpx) pins+=("httpx==0.28.1") ;;
            esac
        done
        # Their own dependencies (idna, click, h11, httpcore, certifi) are usually there.
        if [[ -d "$wheels" ]] && "${pip[@]}" --no-index --find-links "$wheels" "${pins[@]}"; then
            say "installed from $wheels"
        else
            links=()
            [[ -d "$wheels" ]] && links=(--find-links "$wheels")
            "${pip[@]}" --retries 1 --timeout 20 "${links[@]}" "${pins[@]}" \
                || { say "cannot install ${pins[*]}"; exit 1; }
        fi
    fi

    # The project itself, without its pinned torch (no build isolation: works offline).
    if ! "${pip[@]}" --no-deps --no-build-isolation -e "$root" 2>/dev/null; then
        say "pip install -e failed; using PYTHONPATH=src"
    fi
fi
export PYTHONPATH="$root:$root/src${PYTHONPATH:+:$PYTHONPATH}"

"$py" - <<'PY' >&2
import torch, transformers, starlette, uvicorn, anyio, httpx
print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "no cuda",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "",
      "| transformers", transformers.__version__, "| starlette", starlette.__version__,
      "| uvicorn", uvicorn.__version__, "| anyio", anyio.__version__)
PY

say "running the scenarios (budget ${budget}s) into $out_dir"
timeout --signal=TERM --kill-after=15 $(( budget + 60 )) \
    "$py" -m benchmarks.run --gpu $dry_run --budget-s "$budget" --out "$out_dir"
status=$?
say "done with status $status: $(ls "$out_dir" | tr '\n' ' ')"
exit $status
