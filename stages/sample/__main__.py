"""`accelerate launch -m stages.sample --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.sample.config import SampleStage
from stages.sample.stage import train

run_stage(train, SampleStage)
