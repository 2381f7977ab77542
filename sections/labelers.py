"""Who ranks or judges answers, as configs (torch-free): the `rank` kind's labelers and the `eval` kind's judge.

- `rule`: a `module:function(prompt, answers, reference) -> scores` (higher is better), a programmatic
  preference: a simulation of labelers, not labelers;
- `judge`: a reward model's scores (`inputs.judge`, a reward stage, or `model`, an HF sequence-classifier
  directory), a simulated annotator. Both take a `temperature`: above 0 the order is drawn
  Plackett-Luce from softmax(score / temperature), so labels disagree as people's do;
- `lm`: an instruct LM asked whether each answer is good (log P(Yes) - log P(No)), a simulated annotator;
- `human`: people, on the page `rlhf label` serves (the rank kind only).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from core.schema import DirPath, StrictModel, volatile
from sections.common import LoadingSettings, ModelSource, Problems


class LabelerSection(StrictModel):
    """What a stage asks of whoever ranks or judges, whatever its kind (so no stage checks a labeler's type)."""

    #: people rank on a page; the stage waits for their labels instead of scoring
    by_people: ClassVar[bool] = False

    def problems(self) -> Problems:
        """Its own settings' problems, keyed relative to its section."""
        return []

    def source_problems(self, inputs: dict[str, str], loc: tuple) -> Problems:
        """Its problems under `loc` (where its section is), and no judge model among the stage's inputs: only a
        reward-model judge reads one."""
        problems = [((*loc, *key), message) for key, message in self.problems()]
        if "judge" in inputs:
            problems.append((("inputs", "judge"), f"a {self.kind} {loc[-1]} takes no judge model"))
        return problems

    def reward_model_dir(self) -> Path | None:
        """The reward-model directory it scores with, when it names one (an eval refuses the policy's own)."""
        return None


class Noise(LabelerSection):
    """How far a simulated labeler strays from its scores."""

    temperature: float = Field(0.0, ge=0, description="0: order by score (equal scores tie); above 0: a "
                                                      "Plackett-Luce draw from softmax(score / temperature)")


def locate_module(module: str) -> str | None:
    """The file a dotted module name would import from, found as the import system finds it but without
    executing any package's __init__ on the way (importlib.util.find_spec of a dotted name imports its
    parents); None if there is none."""
    parts = module.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    spec = importlib.util.find_spec(parts[0])  # a top-level name is found, not imported
    for depth in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: depth + 1]), spec.submodule_search_locations)
    return spec.origin if spec is not None else None


class RuleLabeler(Noise):
    """Scores from a Python function: `module:function(prompt, answers, reference) -> list[float]`."""

    kind: Literal["rule"]
    function: str = Field(description="module:function, importable where the stage runs")

    def problems(self) -> Problems:
        """A `module:function` whose module is a file that can be found, without running any of it (a plan
        never executes a package), and is not the standard library's (no `os:system`)."""
        module, _, name = self.function.partition(":")
        if not module or not name or not name.isidentifier():
            return [(("function",), f"expected module:function, got {self.function!r}")]
        if module.split(".")[0] in sys.stdlib_module_names or module.split(".")[0] in sys.builtin_module_names:
            return [(("function",), f"{module!r} is the standard library's: a rule is a function of "
                                              "your own module (or stages.rank.rules)")]
        if locate_module(module) is None:
            return [(("function",), f"module {module!r} cannot be imported")]
        return []

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

    def source_problems(self, inputs: dict[str, str], loc: tuple) -> Problems:
        """Exactly one judge model (`inputs.judge` or `model`), loadable as asked."""
        if ("judge" in inputs) == (self.model is not None):
            return [((*loc, "model"), f"give the judge as inputs.judge (a reward stage) or {'.'.join(loc)}.model, "
                                      "exactly one")]
        return self.loading.loading_problems((*loc, "loading"))

    def reward_model_dir(self) -> Path | None:
        """`model`, when the judge is given as a directory."""
        return Path(self.model) if self.model else None

    def describe(self) -> str:
        """Who ranked, for the manifest and the report."""
        source = f"reward model {self.model}" if self.model else "reward model inputs.judge"
        return source + (f" (temperature {self.temperature})" if self.temperature else "")


#: what an LM judge is asked about each answer; it answers Yes or No
LM_QUESTION = ("Here is a request and a reply.\n\nRequest: {prompt}\n\nReply: {answer}\n\n"
               "Is the reply a helpful, correct and relevant response to the request? Answer Yes or No.")


class LmJudgeLabeler(Noise):
    """An instruct LM asked about each answer (`question`, with {prompt} and {answer}); the score is
    log P("Yes") - log P("No") for its first reply token (a pointwise LLM-as-a-judge)."""

    kind: Literal["lm"]
    model: ModelSource = Field(description="the instruct LM: path, gguf (e.g. SmolLM2-135M-Instruct) or hub")
    question: str = LM_QUESTION
    max_length: int = Field(512, ge=16, description="tokens of the question the judge reads (longer keep their end)")
    batch_size: int = Field(8, ge=1, description="questions per forward")

    def problems(self) -> Problems:
        """One model source, and a question with both placeholders."""
        problems: Problems = []
        if len(self.model.set_sources()) != 1:
            problems.append((("model",), "give exactly one of model.path, model.gguf, model.hub"))
        if "{prompt}" not in self.question or "{answer}" not in self.question:
            problems.append((("question",), "expected the placeholders {prompt} and {answer}"))
        return problems + self.model.loading_problems(("model",))

    def describe(self) -> str:
        """Who ranked, for the manifest and the report."""
        return f"LM judge {self.model.source()}" + (f" (temperature {self.temperature})" if self.temperature else "")


class HumanLabeler(LabelerSection):
    """People rank the answers on a local page (`rlhf label RUN_DIR`), or in Label Studio / Argilla through
    `rlhf label --export / --import`. The stage waits until `min_labeled` prompts are ranked."""

    kind: Literal["human"]
    min_labeled: int = Field(ge=1, description="ranked prompts before the stage runs (and downstream with it)")
    guidelines: str | None = volatile(None, description="what to rank by: shown above every prompt on the page")
    double_labeled: int = volatile(0, ge=0, description="the first N sampled prompts are ranked by two different "
                                                        "people: their agreement is reported")

    by_people: ClassVar[bool] = True

    def source_problems(self, inputs: dict[str, str], loc: tuple) -> Problems:
        """No judge model: people rank."""
        return [(("inputs", "judge"), "people rank without a judge model")] if "judge" in inputs else []

    def describe(self) -> str:
        """Who ranked, for the manifest and the report."""
        return "people (rlhf label)"


#: who can rank sampled answers (the rank kind)
Labeler = Annotated[RuleLabeler | JudgeLabeler | LmJudgeLabeler | HumanLabeler, Field(discriminator="kind")]
#: who can judge without a person in the loop (the eval kind, PPO's evaluation.judge)
SimulatedLabeler = Annotated[RuleLabeler | JudgeLabeler | LmJudgeLabeler, Field(discriminator="kind")]


def judge_problems(judge: RuleLabeler | JudgeLabeler | LmJudgeLabeler, inputs: dict[str, str], loc: tuple) -> Problems:
    """A judge that can run and scores without noise (`loc` is where the judge's section is)."""
    problems: Problems = []
    if judge.temperature:
        problems.append(((*loc, "temperature"), "an evaluation judge scores without noise: expected 0"))
    return problems + judge.source_problems(inputs, loc)
