"""The `dpo` kind's config: direct preference optimisation of a policy on preference rows with TRL's
DPOTrainer, no reward model and no sampling (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.numbers import fmt
from core.schema import Panel, StrictModel
from rows.records import ranking_problems
from sections.common import Problems
from sections.preference import PreferenceStage

#: TRL 1.16's DPO losses (DPOConfig.loss_type); tests/unit/test_dpo.py checks the list against TRL
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
DpoLoss = Literal[DPO_LOSSES]


class DpoSettings(StrictModel):
    """TRL's DPO loss, passed through."""

    beta: float = Field(0.1, gt=0, description="the KL strength to the reference (TRL's beta)")
    loss_type: DpoLoss | list[DpoLoss] = Field("sigmoid", description="one of TRL's DPO losses, or several "
                                                                      "combined by loss_weights (e.g. MPO)")
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust DPO / cDPO: the assumed label noise")
    precompute_ref_log_probs: bool = Field(False, description="score the reference once before training, then "
                                                              "free it (memory for time)")

    def losses(self) -> list[str]:
        """The loss types as TRL's list."""
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


class DpoStage(PreferenceStage):
    """DPO from a policy (an sft-like stage) on preference rows, against a frozen reference: the policy's own
    starting point, another stage (`inputs.reference`), or with LoRA the adapter switched off."""

    kind: Literal["dpo"]
    dpo: DpoSettings = DpoSettings()

    module = "stages.dpo"
    headline = ("eval/reward_accuracy", "eval/reward_margin")
    live = ("loss", "eval_rewards/accuracies")
    about = ("Direct preference optimisation (Rafailov et al. 2023, TRL's DPOTrainer): the policy learns to prefer "
             "the chosen answer over the rejected one, relative to a frozen reference, with no reward model and no "
             "sampling. Reward accuracy is the share of held-out pairs whose implicit reward, beta x the log-ratio "
             "to the reference, orders the answers like the labels; 0.5 is chance. It is the model's own verdict: "
             "an eval stage with an independent judge says whether the answers got better.")
    panels = (Panel("training loss", "DPO loss", (("loss", "train"),)),
              Panel("reward accuracy (held-out pairs)", "accuracy", (("eval_rewards/accuracies", "held-out"),),
                    reference=0.5),
              Panel("reward margin (held-out pairs)", "beta x log-ratio margin", (("eval_rewards/margins", "held-out"),)))

    def input_problems(self) -> Problems:
        """As every preference kind; loss weights that match the losses."""
        problems = super().input_problems()
        weights = self.dpo.loss_weights
        if weights is not None and len(weights) != len(self.dpo.losses()):
            problems.append((("dpo", "loss_weights"), f"{len(weights)} weights for {len(self.dpo.losses())} losses"))
        return problems

    def data_problems(self) -> list[str]:
        """Unreadable sources and unusable rows (unless data.skip_bad_rows), with source and line."""
        return ranking_problems(self.data.files(), skip_bad_rows=self.data.skip_bad_rows)

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Held-out reward accuracy and margin."""
        if metrics.get("eval/reward_accuracy") is None:
            return ""
        return (f"Held-out reward accuracy {fmt(metrics['eval/reward_accuracy'])} (margin "
                f"{fmt(metrics.get('eval/reward_margin'))}) on {fmt(metrics.get('data/validation_pairs'))} pairs, "
                f"after {fmt(metrics.get('train/steps'))} steps; the policy's own implicit reward, not a judge's.")
