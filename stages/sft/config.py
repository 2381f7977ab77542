"""The `sft` kind's config: supervised fine-tuning on chat data with TRL's SFTTrainer (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.schema import Panel, SampleTable
from rows.records import sft_problems
from sections.common import (
    ChatData,
    ChatStage,
    LoraSettings,
    SampleSettings,
    before_after_table,
    loss_findings,
)


class SftData(ChatData):
    """Rows `{"text"}`, `{"prompt", "completion"}` (strings or messages) or `{"messages": [...]}` (the last
    turn is the answer; `tool` turns and extra message keys pass to the chat template, as does `tools`)."""

    packing: bool = Field(False, description="pack several short examples into each max_length sequence")


class SftStage(ChatStage):
    """Supervised fine-tuning on instruction data with TRL's SFTTrainer, loss on the answer by default."""

    kind: Literal["sft"]
    data: SftData
    loss_on: Literal["completion", "assistant", "all"] = Field(
        "completion", description="completion: the last answer (a row's completion) only; assistant: every assistant "
        "turn of a conversation (the chat template's {% generation %} markers); all: the whole sequence")
    lora: LoraSettings | None = None
    samples: SampleSettings = SampleSettings()

    module = "stages.sft"
    headline = ("eval/loss", "eval/perplexity")
    # 2: samples record the prompt's messages (PPO answers the same prompts)
    # 3: the default chat template renders tool turns and tool calls; text rows train as language modelling
    version = 3
    about = ("Supervised fine-tuning on instruction data; the loss counts the answer tokens only (every assistant "
             "turn with `loss_on: assistant`, everything with `loss_on: all`). Validation is on held-out instructions.")
    panels = (Panel("", "loss (nats per token)", (("loss", "train"), ("eval_loss", "validation"))),)

    def data_problems(self) -> list[str]:
        """Unreadable sources and unusable rows, with source and line; text rows mixed with chat rows, or
        under `loss_on: assistant`."""
        return sft_problems(self.data.files(), loss_on=self.loss_on)

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Validation loss and perplexity, down from the input model's."""
        return loss_findings(metrics)

    @classmethod
    def sample_tables(cls, name: str, manifest: dict) -> list[SampleTable]:
        """The input model's greedy answers beside the SFT model's."""
        return before_after_table(name, manifest)
