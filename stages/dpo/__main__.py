"""`accelerate launch -m stages.dpo --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.dpo.config import DpoStage
from stages.dpo.stage import train

run_stage(train, DpoStage)
