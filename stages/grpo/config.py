"""The `grpo` kind's config: GRPO (Shao et al. 2024) with TRL's GRPOTrainer against a reward stage's model
and/or a rule (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sections.group_rl import GroupRLStage

#: TRL 1.16's GRPO losses (GRPOConfig.loss_type); tests/unit/test_group_rl.py checks the list against TRL
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


class GrpoStage(GroupRLStage):
    """GRPO: each answer's advantage is its reward against the mean (and std) of its prompt's group."""

    kind: Literal["grpo"]
    loss_type: Literal[GRPO_LOSSES] = Field("dapo", description="TRL's token-loss aggregation (dapo: TRL's default)")
    epsilon: float = Field(0.2, gt=0, description="the clip range of the probability ratio")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="advantages divided by the group's "
                                                                                  "std, the batch's, or not")

    module = "stages.grpo"
    about = ("GRPO (Shao et al. 2024, TRL's GRPOTrainer): K sampled answers per prompt, each answer's advantage "
             "its reward against its group's mean, a KL penalty to the reference, no critic. The reward is the "
             "one the policy was optimised against, so it flatters: an eval stage with an independent judge says "
             "whether the answers got better.")
