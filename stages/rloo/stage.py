"""RLOO: prompts -> TRL's RLOOTrainer against the reward stage's model (and/or a rule) -> HF causal LM.

    accelerate launch -m stages.rloo --config configs/pipelines/compare.yaml --stage rloo
"""

from __future__ import annotations

from trl import RLOOConfig, RLOOTrainer

from stages.common.entry import StageContext
from stages.common.group_rl import group_arguments, train_group_rl
from stages.rloo.config import RlooStage


def train(ctx: StageContext) -> dict:
    """Train with RLOO; the manifest metrics (stages.common.group_rl)."""
    cfg: RlooStage = ctx.config
    return train_group_rl(ctx, RLOOTrainer, lambda **reference: group_arguments(
        ctx, RLOOConfig, epsilon=cfg.epsilon, normalize_advantages=cfg.normalize_advantages, **reference))
