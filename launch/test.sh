#!/usr/bin/env bash
# Run the whole test suite (unit tests in seconds, then real tiny trainings through accelerate launch),
# creating .venv first if needed. Extra arguments go to pytest, e.g. `launch/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || bash launch/setup.sh
exec .venv/bin/python -m pytest -q --durations=15 "$@"
