"""`accelerate launch -m stages.lm_eval --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.lm_eval.config import LmEvalStage
from stages.lm_eval.stage import train

run_stage(train, LmEvalStage)
