#!/usr/bin/env bash
# Run a whole pipeline in one shot (default: the embedded tiny pipeline), creating .venv if needed.
#   launch/pipeline.sh [CONFIG] [rlhf run options...]
# Re-running the same command resumes an interrupted stage and skips the fresh ones.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/rlhf ] || bash launch/setup.sh
exec .venv/bin/rlhf run "$@"
