"""`accelerate launch -m stages.ppo --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.ppo.config import PpoStage
from stages.ppo.stage import train

run_stage(train, PpoStage)
