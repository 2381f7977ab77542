"""GRPO: prompts -> TRL's GRPOTrainer against the reward stage's model (and/or a rule) -> HF causal LM.

    accelerate launch -m stages.grpo --config configs/pipelines/compare.yaml --stage grpo
"""

from __future__ import annotations

from trl import GRPOConfig, GRPOTrainer

from stages.common.entry import StageContext
from stages.common.group_rl import group_arguments, train_group_rl
from stages.grpo.config import GrpoStage


def train(ctx: StageContext) -> dict:
    """Train with GRPO; the manifest metrics (stages.common.group_rl)."""
    cfg: GrpoStage = ctx.config
    return train_group_rl(ctx, GRPOTrainer, lambda **reference: group_arguments(
        ctx, GRPOConfig, loss_type=cfg.loss_type, epsilon=cfg.epsilon, scale_rewards=cfg.scale_rewards, **reference))
