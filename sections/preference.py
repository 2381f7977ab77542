"""Config shared by the kinds that learn from preferences without a reward model or sampling, dpo and kto
(TRL's DPOTrainer and KTOTrainer): a policy, an optional frozen reference, preference sources and the
rankings of a rank stage (torch-free)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from core.schema import SampleTable
from sections.common import (
    ChatData,
    ChatStage,
    DataFiles,
    LoraSettings,
    Problems,
    SampleSettings,
    before_after_table,
    source_positions,
    too_long,
)


class PreferenceData(ChatData):
    """Preference rows in every shape the project reads. With `inputs.rankings` (a rank stage) its rankings
    join the training sources, which may then be none."""

    train: DataFiles = []

    skip_bad_rows: bool = Field(False, description="skip unusable rows (counted and recorded) instead of refusing the file")


class PreferenceStage(ChatStage):
    """A policy (an sft-like stage, or model.path/gguf/hub) optimised on preferences against a frozen reference:
    its own starting point, another stage (`inputs.reference`), or with LoRA the adapter switched off."""

    data: PreferenceData
    lora: LoraSettings | None = None
    samples: SampleSettings = SampleSettings()

    input_roles: ClassVar[dict[str, bool]] = {"model": False, "reference": False, "rankings": False}

    def input_problems(self) -> Problems:
        """Exactly one policy source; batches; a usable template; training data or a rank stage."""
        sources = (["inputs.model"] if "model" in self.inputs else []) + self.model.set_sources()
        problems = [] if len(sources) == 1 else [(("model",), "give exactly one of inputs.model, model.path, model.gguf, "
                                                              f"model.hub (found: {', '.join(sources) or 'none'})")]
        problems += [p for p in super().input_problems() if p[0] != ("model",)]
        if not self.data.train and "rankings" not in self.inputs:
            problems.append((("data", "train"), "expected training sources, or a rank stage as inputs.rankings"))
        return problems

    def world_problems(self, world: int) -> Problems:
        """Batches that do not split over `world` processes."""
        return self.train.world_problems(world)

    def output_positions(self, upstream: dict[str, int | None]) -> int | None:
        """The policy's position range."""
        return upstream.get("model") if "model" in self.inputs else source_positions(self.model.source())

    def length_problems(self, upstream: dict[str, int | None]) -> Problems:
        """Examples longer than the policy's positions."""
        return too_long(("data", "max_length"), self.data.max_length, self.output_positions(upstream),
                        what="data.max_length")

    @classmethod
    def sample_tables(cls, name: str, manifest: dict) -> list[SampleTable]:
        """The input policy's greedy answers beside the trained one's."""
        return before_after_table(name, manifest)
