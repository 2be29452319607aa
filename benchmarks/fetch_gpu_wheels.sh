#!/usr/bin/env bash
# Download the pure-Python wheels gpu.sh installs on a GPU machine that cannot reach a
# package index (starlette, uvicorn, anyio and its typing_extensions, httpx) into
# benchmarks/wheels/.
# The GPU image already holds torch, transformers, tokenizers, click, h11 and httpcore.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$here/wheels" \
    starlette==1.10.0 uvicorn==0.54.0 anyio==4.16.0 httpx==0.28.1 typing_extensions==4.16.0
ls -l "$here/wheels"
