"""The `rank` kind's config: who ranks the sampled answers (torch-free).

Labelers:
- `rule`: a `module:function(prompt, answers, reference) -> scores` (higher is better), a programmatic
  preference: a simulation of labelers, not labelers;
- `judge`: a reward model's scores (inputs.judge, a reward stage, or `model`, an HF sequence-classifier
  directory), a simulated annotator. Both take a `temperature`: above 0 the order is drawn
  Plackett-Luce from softmax(score / temperature), so labels disagree as people's do.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Literal

from pydantic import Field

from core.numbers import fmt, percent
from core.schema import DirPath, StageConfig, StrictModel, volatile
from core.sections import LoadingSettings, Problems

#: the artifact's file: the ranking rows the reward kind reads
RANKINGS_FILE = "rankings.jsonl"


class Noise(StrictModel):
    """How far a simulated labeler strays from its scores."""

    temperature: float = Field(0.0, ge=0, description="0: order by score (equal scores tie); above 0: a "
                                                      "Plackett-Luce draw from softmax(score / temperature)")


class RuleLabeler(Noise):
    """Scores from a Python function: `module:function(prompt, answers, reference) -> list[float]`."""

    kind: Literal["rule"]
    function: str = Field(description="module:function, importable where the stage runs")

    def problems(self) -> Problems:
        """A `module:function` whose module can be found."""
        module, _, name = self.function.partition(":")
        if not module or not name:
            return [(("labeler", "function"), f"expected module:function, got {self.function!r}")]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return [] if found else [(("labeler", "function"), f"module {module!r} cannot be imported")]

    def describe(self) -> str:
        """Who ranked, for the manifest and the report."""
        return f"rule {self.function}" + (f" (temperature {self.temperature})" if self.temperature else "")


class JudgeLabeler(Noise):
    """Scores from a reward model: `inputs.judge` (a reward stage) or `model` (an HF classifier directory)."""

    kind: Literal["judge"]
    model: DirPath | None = Field(None, description="an HF sequence-classifier directory, when inputs.judge is unset")
    loading: LoadingSettings = LoadingSettings()
    max_length: int = Field(512, ge=8, description="tokens of prompt and answer the judge reads")
    batch_size: int = Field(16, ge=1, description="answers per forward")

    def describe(self) -> str:
        """Who ranked, for the manifest and the report."""
        source = f"reward model {self.model}" if self.model else "reward model inputs.judge"
        return source + (f" (temperature {self.temperature})" if self.temperature else "")


Labeler = Annotated[RuleLabeler | JudgeLabeler, Field(discriminator="kind")]


class RankStage(StageConfig):
    """A labeler orders each prompt's K sampled answers (ties allowed): the reward model's training data."""

    kind: Literal["rank"]
    labeler: Labeler
    seed: int = 0
    save_every: int = volatile(32, ge=1, description="prompts between checkpoints (the rankings so far)")

    module = "stages.rank"
    input_roles = {"samples": True, "judge": False}
    headline = ("rank/prompts", "rank/tie_share", "rank/length_tau")
    live = ("rank/prompts",)
    about = ("Each prompt's sampled answers, ordered by the labeler. Rows where every answer ties teach nothing "
             "and are dropped. A length correlation near 1 means the labeler mostly rewards long answers, and "
             "so will the reward model.")

    def input_problems(self) -> Problems:
        """A labeler that can run: an importable rule, or exactly one judge model."""
        if isinstance(self.labeler, RuleLabeler):
            problems = self.labeler.problems()
            if "judge" in self.inputs:
                problems.append((("inputs", "judge"), "a rule labeler takes no judge model"))
            return problems
        if ("judge" in self.inputs) == (self.labeler.model is not None):
            return [(("labeler", "model"), "give the judge as inputs.judge (a reward stage) or labeler.model, "
                                           "exactly one")]
        return self.labeler.loading.loading_problems(("labeler", "loading"))

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Rows ranked and dropped, ties, and the length preference."""
        if metrics.get("rank/prompts") is None:
            return ""
        return (f"{metrics['rank/prompts']} prompts ranked ({metrics['rank/dropped_all_tied']} dropped with every "
                f"answer tied); {percent(metrics['rank/tie_share'])} of answer pairs tied; Kendall tau of preference and "
                f"length {fmt(metrics['rank/length_tau'])}.")
