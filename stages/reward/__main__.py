"""`accelerate launch -m stages.reward --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.reward.config import RewardStage
from stages.reward.stage import train

run_stage(train, RewardStage)
