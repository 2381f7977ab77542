"""Config sections that several stage kinds share, and the cross-field checks they share.

Torch-free, like every config: the orchestrator validates a whole pipeline with these before launching.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from core.engines import vllm_problem
from core.numbers import fmt
from core.schema import DirPath, FilePath, GgufPath, HubModel, SampleTable, StageConfig, StrictModel, volatile
from rows.datasources import DataSource, DataSources

Problems = list[tuple[tuple, str]]


class LoopSettings(StrictModel):
    """An optimization loop's settings: steps, optimizer, schedule, precision, seed, logging and checkpoints.
    PPO takes these alone (its batches are `ppo.*`); the Trainer-based stages take `TrainSettings`."""

    max_steps: int = Field(ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.95, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    activation_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    # not in the fingerprint: they change what is logged and how often state is saved, not the weights
    log_every: int = volatile(10, ge=1)
    save_every: int = volatile(100, ge=1)
    keep_last: int = volatile(2, ge=1, description="complete checkpoints kept")


class TrainSettings(LoopSettings):
    """Optimization settings shared by the Trainer-based stages: the loop's, plus batches, Liger's kernels and
    the Trainer's evaluation interval."""

    max_steps: int | None = Field(None, ge=1, description="optimizer steps; or give epochs")
    epochs: float | None = Field(None, gt=0, description="passes over the training rows, instead of max_steps "
                                                         "(the Trainer counts the steps; fractions allowed)")
    batch_size: int = Field(16, ge=1, description="global batch in sequences, whatever the process count")
    micro_batch_size: int | None = Field(None, ge=1, description="per process and step; default: batch_size")
    liger_kernel: bool | None = Field(None, description="Liger's fused kernels in the Trainer (pip install liger-kernel)")
    eval_every: int | None = volatile(None, ge=1, description="steps between evaluations on the validation rows; "
                                                           "default: only at the end")

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> "TrainSettings":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps and epochs")
        return self

    def world_problems(self, world: int) -> Problems:
        """A batch that does not split into equal micro-batches over `world` processes (as the Trainer kinds'
        gradient accumulation splits it)."""
        micro = min(self.micro_batch_size or self.batch_size, max(1, self.batch_size // world))
        if self.batch_size % (micro * world) or self.batch_size < world:
            return [(("train", "batch_size"), f"{self.batch_size} must be a multiple of micro_batch_size ({micro}) "
                                              f"x processes ({world})")]
        return []

    def batch_problems(self) -> Problems:
        """A micro-batch that does not divide the global batch; Liger or a tracker asked for but not installed."""
        micro = self.micro_batch_size or self.batch_size
        problems = []
        if self.batch_size % micro:
            problems.append((("train", "micro_batch_size"), f"must divide train.batch_size ({self.batch_size})"))
        if self.liger_kernel and importlib.util.find_spec("liger_kernel") is None:
            problems.append((("train", "liger_kernel"), "needs the liger-kernel package (pip install liger-kernel)"))
        return problems


#: the kinds that train a LoRA adapter on a quantized model (QLoRA), for the refusals of every other kind
QLORA_KINDS = ("sft", "reward", "dpo", "kto", "grpo", "rloo", "ppo")


class QuantizationSettings(StrictModel):
    """QLoRA (Dettmers et al., 2023): the base model is loaded quantized by bitsandbytes and stays frozen; only a
    LoRA adapter trains. The artifact is plain: the de-quantized base with the adapter added, as trained."""

    bits: Literal[4, 8] = Field(4, description="4 (QLoRA) or 8 bits per weight")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="the 4-bit data type (nf4: QLoRA's NormalFloat)")
    double_quant: bool = Field(True, description="quantize the 4-bit quantization constants too (QLoRA's)")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="what the 4-bit layers compute in")


class LoadingSettings(StrictModel):
    """How a stage loads its models with transformers (every setting off, or transformers' default, unless set)."""

    dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="the weights as loaded; default fp32 (master weights: train.precision sets the compute)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        None, description="default: transformers' choice (sdpa where it can)")
    trust_remote_code: bool | None = Field(None, description="run the model repository's own code (off unless true)")
    quantization: QuantizationSettings | None = Field(
        None, description="QLoRA: the trained model's base loaded quantized by bitsandbytes, with `lora:` "
                          f"({', '.join(QLORA_KINDS)})")

    def loading_problems(self, loc: tuple = ("model",), *, adapter: "LoraSettings | bool | None" = False) -> Problems:
        """An attention implementation whose package is not installed here; a quantization without bitsandbytes,
        or where no LoRA adapter trains on it (`adapter`: the stage's `lora`, False for a kind without one)."""
        problems = []
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            problems.append((loc + ("attn_implementation",), "flash_attention_2 needs the flash-attn package "
                                                            "(pip install flash-attn, on a CUDA machine)"))
        if self.quantization is None:
            return problems
        where = loc + ("quantization",)
        if adapter is False:
            problems.append((where, "a quantized model (QLoRA) loads only in the kinds that train a LoRA adapter on "
                                    f"it: {', '.join(QLORA_KINDS)}"))
        elif adapter is None:
            problems.append((where, "a quantized model trains through a LoRA adapter (QLoRA): add `lora: {r: 8}`"))
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append((where, "needs bitsandbytes (pip install bitsandbytes)"))
        return problems


class ModelSource(LoadingSettings):
    """An existing HF model directory, .gguf file or Hub model (leave them out when the model comes from
    `inputs.model`), and how to load it."""

    path: DirPath | None = None
    gguf: GgufPath | None = Field(None, description="a .gguf file (or package:file), imported to full-precision HF weights")
    hub: HubModel | None = Field(None, description="owner/name@revision on the Hugging Face Hub (needs network or "
                                                   "a filled HF cache)")

    def source(self) -> str | None:
        """The one that is set, as the stages' model loading takes it (a path, or owner/name@revision)."""
        return self.path or self.gguf or self.hub

    def set_sources(self) -> list[str]:
        """The `model.*` sources that are set, by key."""
        return [f"model.{key}" for key in ("path", "gguf", "hub") if getattr(self, key)]

    def loading_problems(self, loc: tuple = ("model",), *, adapter: "LoraSettings | bool | None" = False) -> Problems:
        """LoadingSettings' problems, and a GGUF file to quantize (it is imported to full precision first)."""
        problems = super().loading_problems(loc, adapter=adapter)
        if self.quantization is not None and self.gguf:
            problems.append((loc + ("quantization",), "a .gguf model is imported to full precision, not quantized "
                                                     "on load: import it in a `model` stage and quantize that"))
        return problems


def one_model_source(stage: StageConfig, model: ModelSource, extra: tuple[tuple[str, object], ...] = ()) -> Problems:
    """Exactly one of `inputs.model`, the `extra` sources (name, value) and `model.path/gguf/hub` is given."""
    options = ["inputs.model", *(name for name, _ in extra), "model.path", "model.gguf", "model.hub"]
    found = (["inputs.model"] if "model" in stage.inputs else []) + [name for name, value in extra if value] \
        + model.set_sources()
    if len(found) == 1:
        return []
    return [(("model",), f"give exactly one of {', '.join(options)} (found: {', '.join(found) or 'none'})")]


def source_positions(source: str | None) -> int | None:
    """The position range (max_position_embeddings) of a local HF model directory, read from its config.json;
    None when unknown here (a GGUF file or a Hub model: the stage checks it when it loads the model)."""
    if not source or not Path(source).is_dir():
        return None
    try:
        config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    limit = config.get("max_position_embeddings", (config.get("text_config") or {}).get("max_position_embeddings"))
    return limit if isinstance(limit, int) else None


def too_long(loc: tuple, needed: int, limit: int | None, *, what: str) -> Problems:
    """`needed` tokens (`what` says which settings add up to it) beyond the model's `limit` positions."""
    if limit is None or needed <= limit:
        return []
    return [(loc, f"{what} = {needed} tokens is more than the model's {limit} positions (max_position_embeddings)")]


class LoraSettings(StrictModel):
    """Train a LoRA adapter (peft) instead of all weights; the saved artifact has it merged in."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


#: training sources, each a path or a DataSource mapping ({path|hub, config, split, columns, weight})
DataFiles = DataSources


class ChatData(StrictModel):
    """Sources of chat rows (files, folders, Hub datasets: rows.datasources); a plain path has weight 1."""

    train: DataFiles = Field(min_length=1)
    validation: DataSources = Field([], description="held-out sources (their weights are not used)")
    validation_fraction: float = Field(0.05, ge=0, lt=0.5, description="of training rows, when `validation` is empty")
    max_length: int = Field(512, ge=8, description="tokens per example (prompt + answer); longer ones are truncated")

    def files(self) -> list[DataSource]:
        """Every data source, training then validation."""
        return [*self.train, *self.validation]


class SampleSettings(StrictModel):
    """Greedy answers to the first `count` held-out prompts, from the input model and the trained one."""

    count: int = Field(4, ge=0)
    max_new_tokens: int = Field(48, ge=1)


def before_after_table(name: str, manifest: dict) -> list[SampleTable]:
    """The greedy answers a trained stage recorded (SampleSettings): its input model's (`base`) beside its own
    (under the kind's name), one table; none when it recorded none."""
    kind = manifest.get("kind")
    samples = [s for s in (manifest.get("metrics") or {}).get("samples") or [] if kind in s]
    if not samples:
        return []
    inputs = manifest.get("inputs") or {}
    source = (inputs.get("model") or inputs.get("policy") or {}).get("stage") or "base"  # "policy" before 2026-12
    rows = [[s["prompt"], s.get("base", "–"), s.get(kind, "–")] for s in samples]
    return [SampleTable(f"{name}: {source} → {name}", ["prompt", f"{source} model", f"{name} model"], rows)]


class VllmSettings(StrictModel):
    """How the vLLM engine is started: memory and compilation, which change its speed, not its answers."""

    kv_cache_gb: int = Field(1, ge=1, description="CPU: the engine's KV cache in GiB (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="GPU: the share of its memory the engine "
                                                                       "takes (weights, activations, KV cache)")
    enforce_eager: bool | None = Field(None, description="no compilation or CUDA graphs: starts in seconds instead of "
                                                         "a minute, generates slower; default: eager on CPU, "
                                                         "compiled on GPU")


class SamplingSettings(StrictModel):
    """How a policy samples answers (temperature, then top-p, as `generate` applies them; stop at EOS)."""

    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int | None = Field(None, ge=1, description="prompts per generate call on each process (the KV cache "
                                                           "grows with it); default: the whole rollout at once")
    # in the fingerprint only when vllm: its sampler draws other answers than generate's, so outputs change,
    # while runs made before the setting existed keep their fingerprints
    engine: Literal["hf", "vllm"] = Field("hf", json_schema_extra={"fingerprint_default": False},
                                          description="hf: transformers' generate; vllm: a vLLM engine in a process "
                                                      "of its own (README, 'Generation engines')")
    vllm: VllmSettings = volatile(VllmSettings(), description="the vLLM engine's start-up (engine: vllm)")

    def engine_problems(self, loc: tuple = ("generation",)) -> Problems:
        """`engine: vllm` where no vLLM can run, in one line."""
        if self.engine != "vllm":
            return []
        problem = vllm_problem()
        return [(loc + ("engine",), problem)] if problem else []


class PromptFiles(StrictModel):
    """Prompts from any SFT or ranking row shape (`prompt` or `messages`); a reference answer is kept when the
    row has one (an SFT completion, or the best of ranked answers)."""

    prompts: DataSources = Field(min_length=1)
    max_prompts: int | None = Field(None, ge=1, description="the first N distinct prompts; default: all")
    max_length: int = Field(256, ge=8, description="prompt tokens; longer prompts keep their end")


ChatTemplate = Literal["auto", "default"] | FilePath


class ChatStage(StageConfig):
    """What the chat stages that train one model share: a model from another stage (or a directory, GGUF file
    or Hub model), a chat template and Trainer settings."""

    data: ChatData
    model: ModelSource = ModelSource()
    chat_template: ChatTemplate = Field(
        "auto", description="auto: the input's template, or ours if it has none; default: always ours; or a .jinja file")
    train: TrainSettings

    input_roles = {"model": False}

    def input_problems(self) -> Problems:
        """Exactly one model source; micro batches that divide the batch; a usable template."""
        problems = one_model_source(self, self.model) + self.train.batch_problems() \
            + self.model.loading_problems(adapter=getattr(self, "lora", False))
        if isinstance(self.chat_template, str) and self.chat_template not in ("auto", "default") \
                and not self.chat_template.endswith((".jinja", ".j2")):
            problems.append((("chat_template",), "expected auto, default or a .jinja / .j2 file"))
        return problems

    def output_positions(self, upstream: dict[str, int | None]) -> int | None:
        """The input model's position range: the artifact keeps it."""
        return upstream.get("model") if "model" in self.inputs else source_positions(self.model.source())

    def length_problems(self, upstream: dict[str, int | None]) -> Problems:
        """Examples longer than the model's positions."""
        return too_long(("data", "max_length"), self.data.max_length, self.output_positions(upstream),
                        what="data.max_length")


def loss_findings(metrics: dict) -> str:
    """'Validation loss L (perplexity P), down from B for the input model, after N steps.' (pretrain, SFT)"""
    if metrics.get("eval/loss") is None:
        return ""
    text = f"Validation loss {fmt(metrics['eval/loss'])} (perplexity {fmt(metrics.get('eval/perplexity'))})"
    if metrics.get("eval/base_loss") is not None:
        text += f", down from {fmt(metrics['eval/base_loss'])} for the input model"
    return text + f", after {fmt(metrics.get('train/steps'))} steps."
