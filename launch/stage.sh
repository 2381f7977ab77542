#!/usr/bin/env bash
# Run one stage by hand with `accelerate launch`; its inputs must already be complete.
#   launch/stage.sh CONFIG STAGE [ACCELERATE_CONFIG] [--restart]
# e.g. launch/stage.sh configs/pipelines/tiny.yaml pretrain configs/accelerate/cpu.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
config=$1 stage=$2 accel=${3:-configs/accelerate/cpu.yaml}
shift $(( $# < 3 ? $# : 3 ))
[ -x .venv/bin/accelerate ] || bash launch/setup.sh
kind=$(.venv/bin/python -c "from pipeline.config import load_pipeline; print(load_pipeline('$config').stages['$stage'].kind)")
exec .venv/bin/accelerate launch --config_file "$accel" -m "stages.$kind" --config "$config" --stage "$stage" "$@"
