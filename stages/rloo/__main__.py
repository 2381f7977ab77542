"""`accelerate launch -m stages.rloo --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.rloo.config import RlooStage
from stages.rloo.stage import train

run_stage(train, RlooStage)
