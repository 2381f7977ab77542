"""`accelerate launch -m stages.pretrain --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.pretrain.config import PretrainStage
from stages.pretrain.stage import train

run_stage(train, PretrainStage)
