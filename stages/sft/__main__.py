"""`accelerate launch -m stages.sft --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.sft.config import SftStage
from stages.sft.stage import train

run_stage(train, SftStage)
