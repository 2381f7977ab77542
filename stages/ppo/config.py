"""The `ppo` kind's config: PPO against a frozen reward model with a KL penalty to the SFT policy, and the
batch arithmetic of its rollouts (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from core.errors import InputError
from core.numbers import fmt, percent
from core.schema import Panel, SampleTable, StageConfig, StrictModel, volatile
from rows.corpus import corpus_problems
from rows.datasources import DataSources
from rows.records import prompt_problems
from sections.common import ChatData, LoadingSettings, LoopSettings, LoraSettings, Problems, SamplingSettings, too_long
from sections.labelers import SimulatedLabeler, judge_problems


class PromptData(ChatData):
    """Prompts, from any SFT or ranking row shape (`prompt` or `messages`); answers are not trained on.
    Held-out rows that carry ranked answers also give the gold win rate."""

    max_length: int = Field(256, ge=8, description="prompt tokens; longer prompts keep their end")


class GenerationSettings(SamplingSettings):
    """How the policy samples answers during rollouts and the final evaluation."""

    missing_eos_penalty: float | None = Field(None, description="subtracted from the score of an answer cut at max_new_tokens")


class KLSettings(StrictModel):
    """The KL penalty to the reference (SFT) policy: fixed beta, or adapted towards `target`."""

    beta: float = Field(0.02, ge=0, description="InstructGPT: 0.02")
    target: float | None = Field(None, gt=0, description="adaptive: target KL per answer (nats)")
    horizon: int = Field(10000, ge=1, description="adaptive: samples over which beta may change by ~20 %")


class PtxSettings(StrictModel):
    """PPO-ptx (InstructGPT): a pretraining-loss term on a text corpus, added to the policy loss."""

    data: DataSources = Field(min_length=1, description="corpus sources, as for pretrain")
    coef: float = Field(1.0, gt=0, description="weight of the language-modelling loss")
    block_size: int = Field(128, ge=8)
    batch_size: int = Field(4, ge=1, description="blocks per optimizer step (one PPO mini-batch), over all "
                                                        "processes; rounded up to a multiple of the process count")


class PpoSettings(StrictModel):
    """The PPO algorithm."""

    rollout_batch_size: int = Field(16, ge=1, description="prompts per iteration (global)")
    mini_batch_size: int = Field(8, ge=1, description="answers per optimizer step (global)")
    micro_batch_size: int | None = Field(None, ge=1, description="answers per forward (per process); default: mini_batch_size")
    epochs: int = Field(4, ge=1, description="passes over each rollout")
    clip_range: float = Field(0.2, gt=0)
    value_clip_range: float = Field(0.2, gt=0)
    value_coef: float = Field(0.1, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    whiten_advantages: bool = True
    score_clip: float | None = Field(None, gt=0, description="clip reward-model scores to [-c, c]")
    whiten_scores: bool = Field(False, description="normalise scores to mean 0, std 1 within each rollout")
    critic_learning_rate: float | None = Field(None, gt=0, description="default: train.learning_rate")
    kl: KLSettings = KLSettings()
    ptx: PtxSettings | None = None
    frozen_models: Literal["auto", "shard", "replicate"] = volatile(
        "auto", description="under DeepSpeed, the frozen reference and reward models: ZeRO-3 inference shards "
        "(shard) or a whole copy per process (replicate); auto = shard under ZeRO-3, else replicate")
    offload_frozen: bool = volatile(
        False, description="keep the frozen reference and reward models in host memory: on one process or DDP "
        "they come to the accelerator only to score each rollout and for the final evaluation; under DeepSpeed "
        "their ZeRO-3 shards are offloaded (offload_param), so frozen_models must shard")


class PpoEvaluation(StrictModel):
    """The final comparison of the SFT policy and the PPO policy on held-out prompts, and (with `every`) the
    policy's held-out proxy score, judge score and KL along the way: over-optimisation in plain sight."""

    prompts: int = Field(64, ge=1, description="held-out prompts answered by both policies")
    samples: int = Field(8, ge=0, description="rows of the sample table kept in the manifest")
    seed: int = 1234
    every: int | None = Field(None, ge=1, description="iterations between held-out evaluations of the policy "
                                                      "(and one before the first); default: only the final one")
    every_prompts: int | None = Field(None, ge=1, description="held-out prompts of each periodic evaluation "
                                                              "(the first ones; default: min(16, prompts))")
    judge: SimulatedLabeler | None = Field(None, description="an independent judge of the held-out answers beside the "
                                                    "reward model PPO optimises (a rule, or a reward model: "
                                                    "inputs.judge or judge.model)")


class PpoStage(StageConfig):
    """PPO against a frozen reward model, with a KL penalty to the frozen SFT policy (our own trainer)."""

    kind: Literal["ppo"]
    data: PromptData
    generation: GenerationSettings = GenerationSettings()
    ppo: PpoSettings = PpoSettings()
    evaluation: PpoEvaluation = PpoEvaluation()
    lora: LoraSettings | None = Field(None, description="train an adapter; the reference is the adapter switched off")
    model: LoadingSettings | None = Field(None, description="how the four roles are loaded from the inputs' artifacts")
    train: LoopSettings = Field(description="max_steps = PPO iterations; the batches are ppo.rollout_batch_size, "
                                               "ppo.mini_batch_size and ppo.micro_batch_size")

    module = "stages.ppo"
    headline = ("eval/ppo_score", "eval/win_rate", "eval/kl")
    live = ("score/mean", "kl/mean")
    # 2: the sample table holds greedy base, SFT and PPO answers, all scored
    # 3: policy and value in one module with one optimizer (one DeepSpeed engine); checkpoints of 2 do not load
    # 4: the reward model scores the rendered chat with its own pooling, as the reward stage trains it
    # 5: top-p's nucleus keeps a tie at its edge whole (bf16 log-probs can differ where the edge is tied)
    version = 5
    input_roles = {"model": True, "reward": True, "judge": False}
    export_leaves_out = ("critic",)  # the value model is training state, not part of the shared policy
    about = ("PPO against the frozen reward model with a KL penalty to the SFT policy. The score should rise while "
             "the KL stays moderate; a score that climbs while the KL runs away, the stop rate falls and distinct-2 "
             "drops is reward hacking. The win rate below is the optimized reward model's own verdict, not an "
             "independent judge's.")
    panels = (Panel("reward-model score of the rollouts", "score", (("score/mean", "score"),), xlabel="iteration"),
              Panel("KL to the SFT policy (nats per answer)", "KL", (("kl/mean", "KL"),), xlabel="iteration"),
              Panel("policy entropy (nats per token)", "entropy", (("policy/entropy", "entropy"),), xlabel="iteration"),
              Panel("PPO clip fraction", "fraction", (("policy/clip_fraction", "clip fraction"),), xlabel="iteration"),
              # Gao et al. (2022): the proxy climbs with KL while an independent judge peaks and falls
              Panel("held out: proxy (optimised RM) vs KL", "proxy score",
                    (("heldout/proxy_score", "reward model PPO optimises"),), xlabel="KL to the SFT policy (nats)",
                    x="heldout/kl"),
              Panel("held out: independent judge vs KL", "judge score",
                    (("heldout/judge_score", "independent judge"),), xlabel="KL to the SFT policy (nats)",
                    x="heldout/kl"))

    def input_problems(self) -> Problems:
        """Mini-batches that divide the rollout, micro-batches that divide the mini-batch; a judge that can run
        and is not the reward model PPO optimises."""
        problems = batch_problems(rollout=self.ppo.rollout_batch_size, mini=self.ppo.mini_batch_size,
                                  micro=self.ppo.micro_batch_size, world=1)
        judge = self.evaluation.judge
        if judge is None:
            if "judge" in self.inputs:
                problems.append((("inputs", "judge"), "set evaluation.judge ({kind: judge}) to judge with it"))
        else:
            problems += judge_problems(judge, self.inputs, ("evaluation", "judge"))
            if self.inputs.get("judge") is not None and self.inputs.get("judge") == self.inputs.get("reward"):
                problems.append((("inputs", "judge"), "the judge is the reward model PPO optimises, so it would "
                                                      "flatter PPO; judge with an independent one"))
        if self.model and self.model.quantization and self.generation.engine == "vllm":
            problems.append((("model", "quantization"), "the vllm engine serves the policy's merged weights, not a "
                                                        "quantized policy: use engine: hf with QLoRA"))
        return (problems + (self.model.loading_problems(adapter=self.lora) if self.model else [])
                + self.generation.engine_problems())

    def world_problems(self, world: int) -> Problems:
        """Rollout, mini- and micro-batches that do not split over `world` processes."""
        return batch_problems(rollout=self.ppo.rollout_batch_size, mini=self.ppo.mini_batch_size,
                              micro=self.ppo.micro_batch_size, world=world)

    def data_problems(self) -> list[str]:
        """Unreadable prompt files or rows, and an unreadable ptx corpus."""
        return prompt_problems(self.data.files()) + (corpus_problems(self.ppo.ptx.data) if self.ppo.ptx else [])

    def output_positions(self, upstream: dict[str, int | None]) -> int | None:
        """The policy's positions: PPO keeps its architecture."""
        return upstream.get("model")

    def length_problems(self, upstream: dict[str, int | None]) -> Problems:
        """Prompt plus answer longer than the policy's or the reward model's positions."""
        needed = self.data.max_length + self.generation.max_new_tokens
        limits = [limit for limit in (upstream.get("model"), upstream.get("reward")) if limit is not None]
        return too_long(("data", "max_length"), needed, min(limits, default=None),
                        what="data.max_length + generation.max_new_tokens")

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """The held-out comparison of SFT and PPO: the reward model's verdict, said to be its own, beside the KL,
        stop rates, lengths, repetition and the word-overlap gold judge."""
        if metrics.get("eval/ppo_score") is None:
            return ""
        text = (f"On {fmt(metrics.get('eval/prompts'))} held-out prompts the reward model PPO optimized scores PPO's "
                f"answers {fmt(metrics['eval/ppo_score'])} against {fmt(metrics.get('eval/sft_score'))} for the SFT "
                f"policy, and prefers PPO's answer on {percent(metrics.get('eval/win_rate'))}")
        if metrics.get("eval/win_rate_low") is not None:
            text += f" (95% interval {percent(metrics['eval/win_rate_low'])}–{percent(metrics['eval/win_rate_high'])})"
        text += (f" of them; that judge is the one PPO was trained to please, so this flatters PPO. The KL to the SFT "
                 f"policy is {fmt(metrics.get('eval/kl'))} nats per answer")
        if metrics.get("eval/ppo_stop_rate") is not None:
            text += (f"; answers that end (EOS): SFT {percent(metrics.get('eval/sft_stop_rate'))}, PPO "
                     f"{percent(metrics['eval/ppo_stop_rate'])}; mean length SFT {fmt(metrics.get('eval/sft_length'))}, "
                     f"PPO {fmt(metrics.get('eval/ppo_length'))} tokens; distinct-2 SFT "
                     f"{fmt(metrics.get('eval/sft_distinct_2'))}, PPO {fmt(metrics.get('eval/ppo_distinct_2'))}")
        if metrics.get("eval/judge_win_rate") is not None:
            text += (f". The independent judge (evaluation.judge) prefers PPO's answer on "
                     f"{percent(metrics['eval/judge_win_rate'])} (95% interval {percent(metrics['eval/judge_win_rate_low'])}–"
                     f"{percent(metrics['eval/judge_win_rate_high'])}): that is the verdict to trust")
        if metrics.get("eval/gold_win_rate") is not None:
            text += (f". Judged by word overlap with the human-preferred answer ({fmt(metrics.get('eval/gold_prompts'))} "
                     f"prompts carry one), PPO's answer is closer on {percent(metrics['eval/gold_win_rate'])}")
            if metrics.get("eval/gold_win_rate_low") is not None:
                text += (f" (95% interval {percent(metrics['eval/gold_win_rate_low'])}–"
                         f"{percent(metrics['eval/gold_win_rate_high'])})")
        return text + "."

    @classmethod
    def sample_tables(cls, name: str, manifest: dict) -> list[SampleTable]:
        """Greedy answers to the same held-out prompts: base -> SFT policy -> PPO, each with the reward model's
        score; it shows the SFT policy's answers too."""
        samples = (manifest.get("metrics") or {}).get("samples")
        if not samples:
            return []
        inputs = manifest.get("inputs") or {}
        policy = (inputs.get("model") or inputs.get("policy") or {}).get("stage")  # "policy" before 2026-12
        labels = {"base": "base model", "sft": "SFT model", "ppo": "PPO model"}
        columns = [c for c in labels if any(c in s for s in samples)]
        headers = ["prompt"] + [h for c in columns for h in (labels[c], f"{labels[c]} score")]
        rows = [[s["prompt"]] + [v for c in columns for v in (s.get(c, "–"), fmt(s.get(f"{c}_score")))] for s in samples]
        return [SampleTable(f"{name}: base → {policy} → {name}", headers, rows, shows=(policy,) if policy else ())]

    @classmethod
    def batch_description(cls, config: dict) -> tuple[str, object]:
        """PPO's step is one rollout."""
        return "rollout batch (answers per iteration)", (config.get("ppo") or {}).get("rollout_batch_size")


@dataclass(frozen=True)
class PpoBatches:
    """How one PPO iteration splits into work per process."""

    prompts: int       # rollout prompts (and answers) per process
    mini: int          # answers per optimizer step, per process
    micro: int         # answers per forward pass (scoring and training)
    accumulation: int  # micro-batches per optimizer step
    updates: int       # optimizer steps per iteration: epochs x mini-batches of the rollout


def batch_problems(*, rollout: int, mini: int, micro: int | None, world: int) -> Problems:
    """Why a rollout of `rollout` answers cannot split into mini-batches of `mini` (global) and micro-batches of
    `micro` (per process; default the whole mini-batch) over `world` processes."""
    micro = micro or mini
    problems = []
    if rollout % mini:
        problems.append((("ppo", "mini_batch_size"), f"must divide ppo.rollout_batch_size ({rollout})"))
    if mini % micro:
        problems.append((("ppo", "micro_batch_size"), f"must divide ppo.mini_batch_size ({mini})"))
    if problems:
        return problems
    if rollout % world or mini % world:
        problems.append((("ppo",), f"rollout_batch_size ({rollout}) and mini_batch_size ({mini}) must be multiples "
                                   f"of the process count ({world})"))
    elif (mini // world) % min(micro, mini // world):
        problems.append((("ppo", "micro_batch_size"), f"must divide the mini-batch per process ({mini // world} = "
                                                      f"ppo.mini_batch_size / {world} processes)"))
    return problems


def ppo_batches(*, rollout: int, mini: int, micro: int | None, epochs: int, world: int) -> PpoBatches:
    """The per-process batch sizes of PPO on `world` processes, and the optimizer steps of one iteration of
    `epochs` passes; InputError when they do not divide."""
    problems = batch_problems(rollout=rollout, mini=mini, micro=micro, world=world)
    if problems:
        raise InputError([f"{'.'.join(loc)}: {message}" for loc, message in problems])
    per_process = mini // world
    micro = min(micro or mini, per_process)
    return PpoBatches(prompts=rollout // world, mini=per_process, micro=micro, accumulation=per_process // micro,
                      updates=epochs * (rollout // mini))
