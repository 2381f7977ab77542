#!/usr/bin/env bash
# Run the whole test suite (unit tests in seconds, then real tiny trainings through accelerate launch),
# creating .venv first if needed. Extra arguments go to pytest, e.g. `launch/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || bash launch/setup.sh
# two workers by default (RLHF_TEST_WORKERS=0 for one process): most of a test's time is a subprocess starting
# or a tiny model stepping on one core, so two files at a time use both; a file's tests stay on one worker,
# so its module fixtures are built once
exec .venv/bin/python -m pytest -q --durations=15 -n "${RLHF_TEST_WORKERS:-2}" --dist loadfile "$@"
