"""`accelerate launch -m stages.model --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.model.config import ModelStage
from stages.model.stage import train

run_stage(train, ModelStage)
