"""The `kto` kind's config: Kahneman-Tversky optimisation (Ethayarajh et al. 2024) of a policy on answers
labelled desirable or undesirable, with TRL's KTOTrainer (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.numbers import fmt
from core.schema import Panel, StrictModel
from rows.records import unpaired_problems
from sections.common import Problems
from sections.preference import PreferenceStage


class KtoSettings(StrictModel):
    """TRL's KTO loss, passed through."""

    beta: float = Field(0.1, gt=0)
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    desirable_weight: float = Field(1.0, gt=0, description="weight of desirable answers (to balance the counts)")
    undesirable_weight: float = Field(1.0, gt=0)
    precompute_ref_log_probs: bool = False


class KtoStage(PreferenceStage):
    """KTO from a policy on unpaired rows `{prompt, completion, label}`, or rankings split at their median
    rank into desirable and undesirable answers."""

    kind: Literal["kto"]
    kto: KtoSettings = KtoSettings()

    module = "stages.kto"
    headline = ("eval/reward_margin", "eval/kl")
    live = ("loss", "eval_rewards/margins")
    about = ("KTO (Ethayarajh et al. 2024, TRL's KTOTrainer): the policy raises the likelihood ratio to the reference "
             "of answers labelled desirable and lowers that of undesirable ones, one answer at a time: no pairs, no "
             "reward model, no sampling. The margin is the policy's own verdict; judge with an eval stage.")
    panels = (Panel("training loss", "KTO loss", (("loss", "train"),)),
              Panel("reward margin (held-out)", "desirable - undesirable reward", (("eval_rewards/margins", "held-out"),)))

    def input_problems(self) -> Problems:
        """The preference kinds' checks; TRL's KL estimate pairs answers inside a per-process batch, so one needs
        at least two (TRL raises on one)."""
        problems = super().input_problems()
        if self.kto.loss_type == "kto" and min(self.train.micro_batch_size or self.train.batch_size,
                                               self.train.batch_size) < 2:
            problems.append((("train", "micro_batch_size" if self.train.micro_batch_size else "batch_size"),
                             "kto needs at least 2 answers per process and micro-batch: its KL reference point "
                             "pairs each answer with another prompt's (or use kto.loss_type: apo_zero_unpaired)"))
        return problems

    def world_problems(self, world: int) -> Problems:
        """Batches that split over `world` processes, with at least two answers per process."""
        problems = super().world_problems(world)
        if self.kto.loss_type == "kto" and self.train.batch_size // world < 2:
            problems.append((("train", "batch_size"), f"kto needs at least 2 answers per process: "
                                                      f"{self.train.batch_size} over {world} processes leaves fewer"))
        return problems

    def data_problems(self) -> list[str]:
        """Unreadable sources and unusable rows (unless data.skip_bad_rows), with source and line."""
        return unpaired_problems(self.data.files(), skip_bad_rows=self.data.skip_bad_rows)

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Held-out margin between desirable and undesirable answers."""
        if metrics.get("eval/reward_margin") is None:
            return ""
        return (f"Held-out margin {fmt(metrics['eval/reward_margin'])} between desirable and undesirable answers "
                f"({fmt(metrics.get('data/validation_answers'))} answers), KL estimate {fmt(metrics.get('eval/kl'))}, "
                f"after {fmt(metrics.get('train/steps'))} steps; the policy's own implicit reward, not a judge's.")
