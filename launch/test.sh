#!/usr/bin/env bash
# Run the whole test suite (unit tests in seconds, then real tiny trainings through accelerate launch),
# creating .venv first if needed. Extra arguments go to pytest, e.g. `launch/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || bash launch/setup.sh
# one process by default. RLHF_TEST_WORKERS=2 runs two pytest-xdist workers, a file each (22 min instead of
# 30 here), but two 2-process DeepSpeed stages at once crashed a ZeRO-3 rank at exit ("terminate called
# without an active exception") in 2 of 3 such runs, so CI stays serial until that is understood
exec .venv/bin/python -m pytest -q --durations=15 -n "${RLHF_TEST_WORKERS:-0}" --dist loadfile "$@"
