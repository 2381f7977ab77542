"""The `rloo` kind's config: REINFORCE leave-one-out (Ahmadian et al. 2024) with TRL's RLOOTrainer against a
reward stage's model and/or a rule (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sections.group_rl import GroupRLStage


class RlooStage(GroupRLStage):
    """RLOO: each answer's baseline is the mean reward of the other K - 1 answers to its prompt."""

    kind: Literal["rloo"]
    beta: float = Field(0.05, ge=0, description="KL coefficient to the reference (TRL's default for RLOO)")
    epsilon: float = Field(0.2, gt=0, description="the clip range of the probability ratio")
    normalize_advantages: bool = Field(False, description="advantages scaled to unit std within the batch")

    module = "stages.rloo"
    about = ("RLOO (Ahmadian et al. 2024, TRL's RLOOTrainer): K sampled answers per prompt, each answer's baseline "
             "the mean reward of the other K - 1, a KL penalty to the reference, no critic. The reward is the one "
             "the policy was optimised against: an eval stage with an independent judge says whether it helped.")
