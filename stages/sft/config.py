"""The `sft` kind's config: supervised fine-tuning on chat data with TRL's SFTTrainer (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.records import sft_problems
from core.schema import Panel
from core.sections import ChatData, ChatStage, LoraSettings, SampleSettings, loss_findings


class SftData(ChatData):
    """Rows `{"prompt", "completion"}` (text or messages) or `{"messages": [...]}` (the last turn is the answer)."""

    packing: bool = Field(False, description="pack several short examples into each max_length sequence")


class SftStage(ChatStage):
    """Supervised fine-tuning on instruction data with TRL's SFTTrainer, loss on the answer by default."""

    kind: Literal["sft"]
    data: SftData
    loss_on: Literal["completion", "all"] = Field("completion", description="answer tokens only, or the whole sequence")
    lora: LoraSettings | None = None
    samples: SampleSettings = SampleSettings()

    module = "stages.sft"
    headline = ("eval/loss", "eval/perplexity")
    version = 2  # 2: samples record the prompt's messages (PPO answers the same prompts)
    about = ("Supervised fine-tuning on instruction data; the loss counts the answer tokens only (unless "
             "`loss_on: all`). Validation is on held-out instructions.")
    panels = (Panel("", "loss (nats per token)", (("loss", "train"), ("eval_loss", "validation"))),)

    def data_problems(self) -> list[str]:
        """Unreadable files and unusable rows, with file and line."""
        return sft_problems(self.data.files())

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Validation loss and perplexity, down from the input model's."""
        return loss_findings(metrics)
