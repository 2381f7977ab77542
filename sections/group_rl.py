"""Config shared by the critic-free RL kinds, grpo and rloo (TRL's GRPOTrainer and RLOOTrainer): K answers per
prompt scored by a reward stage's model (as the reward stage and PPO score them) and/or a rule, each answer's
advantage taken against the others of its group, a KL penalty to the reference (torch-free)."""

from __future__ import annotations

import importlib.util
import math
from typing import ClassVar, Literal

from pydantic import Field

from core.numbers import fmt, percent
from core.schema import DirPath, Panel, StageConfig, StrictModel
from rows.records import prompt_problems
from sections.common import (
    ChatData,
    ChatTemplate,
    LoraSettings,
    ModelSource,
    Problems,
    TrainSettings,
    source_positions,
    too_long,
)
from sections.labelers import RuleLabeler


class GroupPrompts(ChatData):
    """Prompts from any SFT or preference row shape; a row's reference answer (its completion, or the best of
    its ranked answers) reaches a rule reward."""

    max_length: int = Field(256, ge=8, description="prompt tokens; longer prompts keep their end")
    max_prompts: int | None = Field(None, ge=1, description="the first N training rows; default: all")


class GroupGeneration(StrictModel):
    """How the policy samples each prompt's group of answers (TRL's generation settings)."""

    num_generations: int = Field(4, ge=2, description="answers per prompt (the group each advantage is taken in)")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    mask_truncated_completions: bool = Field(False, description="leave answers cut at max_new_tokens out of the loss")
    missing_eos_penalty: float | None = Field(None, gt=0, description="subtracted from the reward of an answer cut at "
                                                                     "max_new_tokens (as PPO's)")
    use_vllm: bool = Field(False, description="generate with vLLM (a CUDA machine with `pip install vllm`); off on CPU")
    vllm_mode: Literal["colocate", "server"] = Field("colocate", description="vLLM in the training processes, or "
                                                                            "a `trl vllm-serve` server")


class GroupRLStage(StageConfig):
    """What grpo and rloo share: a policy (`inputs.model`, an sft-like stage) trained against a reward stage's
    model (`inputs.reward`) and/or a rule (`reward_rule`), with a KL penalty `beta` to the reference."""

    data: GroupPrompts
    generation: GroupGeneration = GroupGeneration()
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference (0: no reference model)")
    reward_rule: RuleLabeler | None = Field(None, description="a rule reward, module:function(prompt, answers, "
                                                              "reference) -> scores, beside or instead of inputs.reward")
    reward_weights: list[float] | None = Field(None, description="with both: [reward model, rule]; default [1, 1]")
    reward_max_length: int = Field(512, ge=8, description="tokens of prompt and answer the reward model reads")
    chat_template: ChatTemplate = "auto"
    lora: LoraSettings | None = None
    model: ModelSource = Field(ModelSource(), description="the policy when inputs.model is unset (path, gguf or hub), "
                                                          "and how the models load")
    reward_model: DirPath | None = Field(None, description="an HF sequence-classifier directory, when inputs.reward "
                                                           "is unset")
    train: TrainSettings = Field(description="batch_size = answers per optimizer step (num_generations per prompt)")
    evaluation_prompts: int = Field(32, ge=1, description="held-out prompts answered (num_generations each) at the end")
    evaluation_judge: RuleLabeler | None = Field(
        None, description="an independent rule, logged beside the reward at every evaluation (train.eval_every) and "
                          "never trained on (weight 0): the report plots the proxy and the judge against the KL")

    input_roles: ClassVar[dict[str, bool]] = {"model": False, "reward": False}
    headline = ("eval/reward", "eval/kl", "eval/length")
    live = ("loss", "reward")
    panels = (Panel("reward of the sampled answers", "reward", (("reward", "train"), ("eval_reward", "held-out"))),
              Panel("KL to the reference (TRL's per-token estimate)", "KL", (("kl", "train"),)),
              Panel("answer length (tokens)", "tokens", (("completions/mean_length", "train"),)),
              # Gao et al. (2022), as PPO's: the proxy climbs with KL while an independent judge peaks and falls
              Panel("held out: proxy (optimised reward) vs KL", "reward", (("eval_reward", "optimised reward"),),
                    xlabel="KL to the reference (TRL's per-token estimate)", x="eval_kl"),
              Panel("held out: independent judge vs KL", "judge score",
                    (("eval_rewards/judge/mean", "evaluation_judge"),),
                    xlabel="KL to the reference (TRL's per-token estimate)", x="eval_kl"))

    def input_problems(self) -> Problems:
        """A reward (a reward stage and/or a rule); weights matching them; batches that hold whole groups."""
        problems = self.train.batch_problems() + self.model.loading_problems(adapter=self.lora)
        sources = (["inputs.model"] if "model" in self.inputs else []) + self.model.set_sources()
        if len(sources) != 1:
            problems.append((("model",), "give exactly one of inputs.model, model.path, model.gguf, model.hub "
                                         f"(found: {', '.join(sources) or 'none'})"))
        models = (["inputs.reward"] if "reward" in self.inputs else []) + (["reward_model"] if self.reward_model else [])
        if len(models) > 1:
            problems.append((("reward_model",), "give inputs.reward or reward_model, not both"))
        rewards = models[:1] + (["reward_rule"] if self.reward_rule else [])
        if not rewards:
            problems.append((("inputs",), "expected a reward: inputs.reward (a reward stage) or reward_model, and/or "
                                          "reward_rule"))
        if self.reward_rule is not None:
            problems += self.reward_rule.source_problems({}, ("reward_rule",))
        if self.evaluation_judge is not None:
            problems += self.evaluation_judge.source_problems({}, ("evaluation_judge",))
        if self.reward_weights is not None and len(self.reward_weights) != len(rewards):
            problems.append((("reward_weights",), f"{len(self.reward_weights)} weights for {len(rewards)} rewards "
                                                  f"({', '.join(rewards)})"))
        if self.generation.use_vllm and importlib.util.find_spec("vllm") is None:
            problems.append((("generation", "use_vllm"), "needs the vllm package (pip install vllm, on a CUDA machine)"))
        if self.train.batch_size % self.generation.num_generations:
            problems.append((("train", "batch_size"), f"must be a multiple of generation.num_generations "
                                                      f"({self.generation.num_generations}): whole groups per step"))
        return problems

    def world_problems(self, world: int) -> Problems:
        """Batches that do not split over `world` processes."""
        return self.train.world_problems(world)

    def data_problems(self) -> list[str]:
        """Unreadable prompt sources and rows without a prompt."""
        return prompt_problems(self.data.files())

    def output_positions(self, upstream: dict[str, int | None]) -> int | None:
        """The policy's position range."""
        return upstream.get("model") if "model" in self.inputs else source_positions(self.model.source())

    def length_problems(self, upstream: dict[str, int | None]) -> Problems:
        """Prompt plus answer beyond the policy's positions."""
        return too_long(("data", "max_length"), self.data.max_length + self.generation.max_new_tokens,
                        self.output_positions(upstream), what="data.max_length + generation.max_new_tokens")

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Held-out reward, KL and length, from the reward the policy was optimised against."""
        if metrics.get("eval/reward") is None:
            return ""
        return (f"Held-out reward {fmt(metrics['eval/reward'])} (the reward it was optimised against; SFT: "
                f"{fmt(metrics.get('eval/base_reward'))}), KL {fmt(metrics.get('eval/kl'))}, answers of "
                f"{fmt(metrics.get('eval/length'))} tokens, stop rate {percent(metrics.get('eval/stop_rate'))}.")


def eval_micro_batch(micro: int, *, world: int, num_generations: int) -> int:
    """Answers per process in an evaluation batch such that the global batch holds whole groups (TRL groups the
    gathered rewards by `num_generations`): `micro` when it does, else the largest multiple of the smallest
    size that does, at most `micro` (that size itself when `micro` is smaller)."""
    unit = num_generations // math.gcd(num_generations, world)
    return max(unit, micro - micro % unit)
