"""The `reward` kind's config: a scalar reward model trained on K ranked answers per prompt (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.numbers import fmt
from core.schema import Panel
from rows.records import ranking_problems
from sections.common import ChatData, ChatStage, DataFiles, LoraSettings, Problems


class RewardData(ChatData):
    """Rows `{"prompt", "answers": [best, ..., worst]}`, `{"prompt", "answers", "ranks"}` or `{"prompt", "chosen", "rejected"}`.
    With `inputs.rankings` (a rank stage) its rankings join the training files, which may then be none."""

    train: DataFiles = []

    skip_bad_rows: bool = Field(False, description="skip unusable rows (counted and recorded) instead of refusing the file")


class RewardStage(ChatStage):
    """A scalar reward model trained on K ranked answers per prompt (all untied pairs at once)."""

    kind: Literal["reward"]
    data: RewardData
    margin: float = Field(0.0, ge=0, description="loss is -log sigmoid(r_better - r_worse - margin)")
    lora: LoraSettings | None = Field(None, description="train a LoRA adapter and the new head instead of all weights "
                                                        "(with model.quantization: QLoRA); the artifact has the adapter "
                                                        "merged, and keeps it in adapter/")

    module = "stages.reward"
    input_roles = {"model": False, "rankings": False}
    headline = ("eval/pairwise_accuracy", "eval/margin")
    live = ("loss", "eval_pairwise_accuracy")
    about = ("A scalar reward model trained on ranked answers (all pairs of a prompt at once). Pairwise accuracy is "
             "the share of held-out answer pairs it orders like the humans did; 0.5 is chance.")
    panels = (Panel("training loss", "ranking loss", (("loss", "train"),)),
              Panel("pairwise accuracy (held-out)", "accuracy", (("eval_pairwise_accuracy", "held-out"),), reference=0.5),
              Panel("margin r(better) - r(worse)", "margin", (("eval_margin", "held-out"),)))

    def input_problems(self) -> Problems:
        """As for SFT; a reward model starts from an HF causal LM (a stage's artifact or model.path)."""
        problems = super().input_problems()
        if not self.data.train and "rankings" not in self.inputs:
            problems.append((("data", "train"), "expected training files, or a rank stage as inputs.rankings"))
        if self.model.gguf is not None:
            problems.append((("model", "gguf"), "a reward model starts from an HF model: import the GGUF in a "
                                                "pretrain or sft stage and use that stage as inputs.model"))
        return problems

    def data_problems(self) -> list[str]:
        """Unreadable files and unusable rows (unless data.skip_bad_rows), with file and line."""
        return ranking_problems(self.data.files(), skip_bad_rows=self.data.skip_bad_rows)

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Held-out pairwise accuracy, against the untrained head and per source."""
        if metrics.get("eval/pairwise_accuracy") is None:
            return ""
        text = f"Held-out pairwise accuracy {fmt(metrics['eval/pairwise_accuracy'])}"
        if metrics.get("eval/base_pairwise_accuracy") is not None:
            text += f" (untrained head: {fmt(metrics['eval/base_pairwise_accuracy'])})"
        sources = sorted({k.split("/")[1] for k in metrics if k.count("/") == 2 and k.endswith("/pairwise_accuracy")})
        if sources:
            text += "; per source: " + ", ".join(f"{s} {fmt(metrics[f'eval/{s}/pairwise_accuracy'])}" for s in sources)
        return text + "."
