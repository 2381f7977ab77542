"""`accelerate launch -m stages.kto --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.kto.config import KtoStage
from stages.kto.stage import train

run_stage(train, KtoStage)
