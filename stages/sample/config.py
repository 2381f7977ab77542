"""The `sample` kind's config: K sampled answers per prompt from a policy, for labelers to rank (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.numbers import fmt, percent
from core.schema import StageConfig, volatile
from rows.records import prompt_problems
from sections.common import LoadingSettings, Problems, PromptFiles, SamplingSettings, too_long


class SampleStage(StageConfig):
    """The policy answers each prompt `samples_per_prompt` times (InstructGPT's comparison data: K = 4-9)."""

    kind: Literal["sample"]
    data: PromptFiles
    samples_per_prompt: int = Field(4, ge=2, le=16, description="K answers per prompt")
    generation: SamplingSettings = SamplingSettings(temperature=1.0, max_new_tokens=48)
    model: LoadingSettings | None = Field(None, description="how the policy is loaded from the input's artifact")
    seed: int = 0
    save_every: int = volatile(16, ge=1, description="prompts between checkpoints (the rows written so far)")

    module = "stages.sample"
    input_roles = {"model": True}
    headline = ("samples/prompts", "samples/stop_rate", "samples/mean_length", "samples/distinct_2")
    live = ("samples/prompts",)
    about = ("The policy's own answers, K per prompt, sampled for labelers to rank: the reward model then learns "
             "from the policy's answers, not from someone else's. A low distinct-2, or answers that all look "
             "alike, leaves the labelers little to choose between.")
    panels = ()

    def input_problems(self) -> Problems:
        """Model-loading settings that cannot work."""
        return (self.model.loading_problems() if self.model is not None else []) + self.generation.engine_problems()

    def data_problems(self) -> list[str]:
        """Unreadable prompt files and rows without a prompt, with file and line."""
        return prompt_problems(list(self.data.prompts))

    def length_problems(self, upstream: dict[str, int | None]) -> Problems:
        """Prompt and answer beyond the policy's positions."""
        return too_long(("data", "max_length"), self.data.max_length + self.generation.max_new_tokens,
                        upstream.get("model"), what="data.max_length + generation.max_new_tokens")

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Prompts, answers, their length, stop rate and diversity."""
        if metrics.get("samples/prompts") is None:
            return ""
        return (f"{metrics['samples/prompts']} prompts × {metrics['samples/per_prompt']} answers; mean length "
                f"{fmt(metrics['samples/mean_length'])} tokens, {percent(metrics['samples/stop_rate'])} stopped at "
                f"EOS, distinct-2 {fmt(metrics['samples/distinct_2'])}; {percent(metrics['samples/all_same'])} of "
                "prompts got K identical answers.")
