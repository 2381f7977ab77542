"""`accelerate launch -m stages.grpo --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.grpo.config import GrpoStage
from stages.grpo.stage import train

run_stage(train, GrpoStage)
