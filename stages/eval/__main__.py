"""`accelerate launch -m stages.eval --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.eval.config import EvalStage
from stages.eval.stage import train

run_stage(train, EvalStage)
