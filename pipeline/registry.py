"""The stage kinds the orchestrator knows: one torch-free config module per kind, `stages/<kind>/config.py`.

Adding a kind is a folder `stages/<kind>/` (config.py, stage.py, __main__.py) and one entry here.
"""

from __future__ import annotations

from core.schema import StageConfig
from stages.dpo.config import DpoStage
from stages.eval.config import EvalStage
from stages.grpo.config import GrpoStage
from stages.kto.config import KtoStage
from stages.lm_eval.config import LmEvalStage
from stages.model.config import ModelStage
from stages.ppo.config import PpoStage
from stages.pretrain.config import PretrainStage
from stages.rank.config import RankStage
from stages.reward.config import RewardStage
from stages.rloo.config import RlooStage
from stages.sample.config import SampleStage
from stages.sft.config import SftStage

KINDS: dict[str, type[StageConfig]] = {
    "model": ModelStage,
    "pretrain": PretrainStage,
    "sft": SftStage,
    "reward": RewardStage,
    "sample": SampleStage,
    "rank": RankStage,
    "ppo": PpoStage,
    "dpo": DpoStage,
    "kto": KtoStage,
    "grpo": GrpoStage,
    "rloo": RlooStage,
    "eval": EvalStage,
    "lm_eval": LmEvalStage,
}
