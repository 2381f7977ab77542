"""`accelerate launch -m stages.rank --config PIPELINE.yaml --stage NAME` (or `--spec` from `rlhf run`)."""

from stages.common.entry import run_stage
from stages.rank.config import RankStage
from stages.rank.stage import train

run_stage(train, RankStage)
