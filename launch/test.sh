#!/usr/bin/env bash
# Run the whole test suite (unit tests in seconds, then real tiny trainings through accelerate launch),
# creating .venv first if needed. Extra arguments go to pytest, e.g. `launch/test.sh -m "not slow"`.
# RLHF_TEST_WORKERS (default 2) pytest-xdist workers take a test file each. The whole suite runs in two
# phases: everything but tests/distributed on the workers, then tests/distributed alone in one process
# (its 2-process stages on a loaded machine once aborted a ZeRO-3 rank at exit; CONTRIBUTING.md, Running).
# With arguments, one pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || bash launch/setup.sh
workers="${RLHF_TEST_WORKERS:-2}"
pytest=(.venv/bin/python -m pytest -q --durations=15)
if [ $# -gt 0 ]; then
  exec "${pytest[@]}" -n "$workers" --dist loadfile "$@"
fi
"${pytest[@]}" -n "$workers" --dist loadfile --ignore tests/distributed
exec "${pytest[@]}" tests/distributed
