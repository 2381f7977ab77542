"""Stage kinds: the typed config of each kind, the inputs it takes and the module that runs it.

Torch-free, so the orchestrator can validate a whole pipeline before launching anything. A new kind is a
StageConfig subclass here plus a `stages/<kind>.py` module.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from pipeline.config import DirPath, FilePath, GgufPath, HubModel, StageConfig, StrictModel, volatile


class TrainSettings(StrictModel):
    """Optimisation settings shared by the Trainer-based stages."""

    max_steps: int = Field(ge=1)
    batch_size: int = Field(16, ge=1, description="global batch in sequences, whatever the process count")
    micro_batch_size: int | None = Field(None, ge=1, description="per process and step; default: batch_size")
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
    eval_every: int | None = volatile(None, ge=1, description="default: only at the end")
    save_every: int = volatile(100, ge=1)
    keep_last: int = volatile(2, ge=1, description="complete checkpoints kept")
    report_to: list[Literal["wandb", "mlflow", "comet_ml", "clearml", "trackio"]] = volatile(
        [], description="trackers besides tensorboard (which always writes to logs/tensorboard)")


class TokenizerTraining(StrictModel):
    """Train a byte-level BPE tokenizer on the stage's corpus before training the model."""

    vocab_size: int = Field(4096, ge=300, description="includes the 256 byte symbols and special tokens")
    min_frequency: int = Field(2, ge=1)


class ModelArchitecture(StrictModel):
    """A Llama-style decoder built from scratch (random init) with these sizes."""

    architecture: Literal["llama"] = "llama"
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = Field(None, ge=1)
    intermediate_size: int = Field(256, ge=8)
    max_position_embeddings: int | None = Field(None, ge=8, description="default: data.block_size")
    tie_word_embeddings: bool = False
    rope_theta: float = Field(10000.0, gt=0)


class PretrainModel(StrictModel):
    """Where the model starts: a new one from `init`, or an existing HF directory at `path`.

    With `inputs.model` (continued pretraining from another stage) leave both out.
    """

    init: ModelArchitecture | None = None
    path: DirPath | None = None
    gguf: GgufPath | None = Field(None, description="a .gguf file (or package:file), imported to full-precision HF weights")
    hub: HubModel | None = Field(None, description="owner/name@revision on the Hugging Face Hub (needs network or "
                                                   "a filled HF cache)")
    tokenizer: TokenizerTraining | None = Field(None, description="with `init`: train a tokenizer")

    def source(self) -> str | None:
        """The existing model to continue from (a path, or owner/name@revision), if any."""
        return self.path or self.gguf or self.hub
    tokenizer_path: DirPath | None = Field(None, description="with `init`: use this tokenizer instead")


class PretrainData(StrictModel):
    """Plain-text corpus: .txt (paragraphs separated by blank lines) or .jsonl with a "text" field."""

    train: list[FilePath] = Field(min_length=1)
    validation: list[FilePath] = []
    validation_fraction: float = Field(0.05, ge=0, lt=0.5, description="of documents, when `validation` is empty")
    block_size: int = Field(128, ge=8)


class PretrainStage(StageConfig):
    """Causal-LM pretraining with packed fixed-length blocks."""

    kind: Literal["pretrain"]
    data: PretrainData
    model: PretrainModel = PretrainModel()
    train: TrainSettings

    module = "stages.pretrain"
    headline = ("eval/loss", "eval/perplexity")
    input_roles = {"model": False}
    version = 2  # 2: the artifact's config has the KV cache on

    def input_problems(self) -> list[tuple[tuple, str]]:
        """Exactly one model source; a tokenizer only when the model is new; sane head counts."""
        problems: list[tuple[tuple, str]] = []
        sources = [n for n, on in (("inputs.model", "model" in self.inputs), ("model.init", self.model.init),
                                   ("model.path", self.model.path), ("model.gguf", self.model.gguf),
                                   ("model.hub", self.model.hub)) if on]
        if len(sources) != 1:
            found = ", ".join(sources) if sources else "none"
            problems.append((("model",), "give exactly one of inputs.model, model.init, model.path, model.gguf, "
                                         f"model.hub (found: {found})"))
        if self.model.init is not None:
            if (self.model.tokenizer is None) == (self.model.tokenizer_path is None):
                problems.append((("model",), "a new model (model.init) needs exactly one of model.tokenizer, model.tokenizer_path"))
            arch = self.model.init
            if arch.hidden_size % arch.num_heads:
                problems.append((("model", "init", "num_heads"), f"must divide hidden_size ({arch.hidden_size})"))
            if arch.num_kv_heads and arch.num_heads % arch.num_kv_heads:
                problems.append((("model", "init", "num_kv_heads"), f"must divide num_heads ({arch.num_heads})"))
            if arch.max_position_embeddings and arch.max_position_embeddings < self.data.block_size:
                problems.append((("model", "init", "max_position_embeddings"), f"must be >= data.block_size ({self.data.block_size})"))
        elif self.model.tokenizer is not None or self.model.tokenizer_path is not None:
            problems.append((("model",), "model.tokenizer / model.tokenizer_path apply only to a new model (model.init)"))
        if not self.data.validation and self.data.validation_fraction == 0:
            problems.append((("data", "validation_fraction"), "must be > 0 when data.validation is empty"))
        micro = self.train.micro_batch_size or self.train.batch_size
        if self.train.batch_size % micro:
            problems.append((("train", "micro_batch_size"), f"must divide train.batch_size ({self.train.batch_size})"))
        return problems

    def data_problems(self) -> list[str]:
        """Unreadable, non-UTF-8 or empty corpus files."""
        from stages.common.corpus import corpus_problems

        return corpus_problems(self.data.train + self.data.validation)


class DataFile(StrictModel):
    """One data file and how much of it goes into each epoch."""

    path: FilePath
    weight: float = Field(1.0, gt=0, description="rows per epoch = weight x rows in the file (2: twice; 0.5: a seeded half)")


def _path_as_data_file(value):
    return {"path": value} if isinstance(value, str) else value


class ChatData(StrictModel):
    """JSONL files of chat examples; a plain path is a DataFile with weight 1."""

    train: list[Annotated[DataFile, BeforeValidator(_path_as_data_file)]] = Field(min_length=1)
    validation: list[FilePath] = []
    validation_fraction: float = Field(0.05, ge=0, lt=0.5, description="of training rows, when `validation` is empty")
    max_length: int = Field(512, ge=8, description="tokens per example (prompt + answer); longer ones are truncated")

    def files(self) -> list[str]:
        """Every data file, training then validation."""
        return [f.path for f in self.train] + list(self.validation)


class SftData(ChatData):
    """Rows `{"prompt", "completion"}` (text or messages) or `{"messages": [...]}` (the last turn is the answer)."""

    packing: bool = Field(False, description="pack several short examples into each max_length sequence")


class RewardData(ChatData):
    """Rows `{"prompt", "answers": [best, ..., worst]}`, `{"prompt", "answers", "ranks"}` or `{"prompt", "chosen", "rejected"}`."""

    skip_bad_rows: bool = Field(False, description="skip unusable rows (counted and recorded) instead of refusing the file")


class ModelSource(StrictModel):
    """An existing HF model directory, .gguf file or Hub model; leave them out when the model comes from
    `inputs.model`."""

    path: DirPath | None = None
    gguf: GgufPath | None = Field(None, description="a .gguf file (or package:file), imported to full-precision HF weights")
    hub: HubModel | None = Field(None, description="owner/name@revision on the Hugging Face Hub (needs network or "
                                                   "a filled HF cache)")

    def source(self) -> str | None:
        """The one that is set, as the stages' model loading takes it (a path, or owner/name@revision)."""
        return self.path or self.gguf or self.hub


class LoraSettings(StrictModel):
    """Train a LoRA adapter (peft) instead of all weights; the saved artifact has it merged in."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class SampleSettings(StrictModel):
    """Greedy answers to the first `count` held-out prompts, from the input model and the trained one."""

    count: int = Field(4, ge=0)
    max_new_tokens: int = Field(48, ge=1)


ChatTemplate = Literal["auto", "default"] | FilePath


class _ChatStage(StageConfig):
    """What the SFT and reward stages share: a model from another stage (or a directory) and a chat template."""

    model: ModelSource = ModelSource()
    chat_template: ChatTemplate = Field(
        "auto", description="auto: the input's template, or ours if it has none; default: always ours; or a .jinja file")
    train: TrainSettings

    input_roles = {"model": False}

    def input_problems(self) -> list[tuple[tuple, str]]:
        """Exactly one model source; micro batches that divide the batch."""
        problems: list[tuple[tuple, str]] = []
        sources = [n for n, on in (("inputs.model", "model" in self.inputs), ("model.path", self.model.path),
                                   ("model.gguf", self.model.gguf), ("model.hub", self.model.hub)) if on]
        if len(sources) != 1:
            found = ", ".join(sources) if sources else "none"
            problems.append((("model",), "give exactly one of inputs.model, model.path, model.gguf, model.hub "
                                         f"(found: {found})"))
        micro = self.train.micro_batch_size or self.train.batch_size
        if self.train.batch_size % micro:
            problems.append((("train", "micro_batch_size"), f"must divide train.batch_size ({self.train.batch_size})"))
        if isinstance(self.chat_template, str) and self.chat_template not in ("auto", "default") \
                and not self.chat_template.endswith((".jinja", ".j2")):
            problems.append((("chat_template",), "expected auto, default or a .jinja / .j2 file"))
        return problems


class SftStage(_ChatStage):
    """Supervised fine-tuning on instruction data with TRL's SFTTrainer, loss on the answer by default."""

    kind: Literal["sft"]
    data: SftData
    loss_on: Literal["completion", "all"] = Field("completion", description="answer tokens only, or the whole sequence")
    lora: LoraSettings | None = None
    samples: SampleSettings = SampleSettings()

    module = "stages.sft"
    headline = ("eval/loss", "eval/perplexity")
    version = 2  # 2: samples record the prompt's messages (PPO answers the same prompts)

    def data_problems(self) -> list[str]:
        """Unreadable files and unusable rows, with file and line."""
        from stages.common.records import sft_problems

        return sft_problems(self.data.files())


class RewardStage(_ChatStage):
    """A scalar reward model trained on K ranked answers per prompt (all untied pairs at once)."""

    kind: Literal["reward"]
    data: RewardData
    margin: float = Field(0.0, ge=0, description="loss is -log sigmoid(r_better - r_worse - margin)")

    module = "stages.reward"
    headline = ("eval/pairwise_accuracy", "eval/margin")
    live = ("loss", "eval_pairwise_accuracy")

    def input_problems(self) -> list[tuple[tuple, str]]:
        """As for SFT; a reward model starts from an HF causal LM (a stage's artifact or model.path)."""
        problems = super().input_problems()
        if self.model.gguf is not None:
            problems.append((("model", "gguf"), "a reward model starts from an HF model: import the GGUF in a "
                                                "pretrain or sft stage and use that stage as inputs.model"))
        return problems

    def data_problems(self) -> list[str]:
        """Unreadable files and unusable rows (unless data.skip_bad_rows), with file and line."""
        from stages.common.records import ranking_problems

        return ranking_problems(self.data.files(), skip_bad_rows=self.data.skip_bad_rows)


class PromptData(ChatData):
    """Prompts, from any SFT or ranking row shape (`prompt` or `messages`); answers are not trained on.
    Held-out rows that carry ranked answers also give the gold win rate."""

    max_length: int = Field(256, ge=8, description="prompt tokens; longer prompts keep their end")


class GenerationSettings(StrictModel):
    """How the policy samples answers during rollouts and the final evaluation."""

    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    missing_eos_penalty: float | None = Field(None, description="subtracted from the score of an answer cut at max_new_tokens")


class KLSettings(StrictModel):
    """The KL penalty to the reference (SFT) policy: fixed beta, or adapted towards `target`."""

    beta: float = Field(0.02, ge=0, description="InstructGPT: 0.02")
    target: float | None = Field(None, gt=0, description="adaptive: target KL per answer (nats)")
    horizon: int = Field(10000, ge=1, description="adaptive: samples over which beta may change by ~20 %")


class PtxSettings(StrictModel):
    """PPO-ptx (InstructGPT): a pretraining-loss term on a text corpus, added to the policy loss."""

    data: list[FilePath] = Field(min_length=1, description=".txt / .jsonl corpus, as for pretrain")
    coef: float = Field(1.0, gt=0, description="weight of the language-modelling loss")
    block_size: int = Field(128, ge=8)
    batch_size: int = Field(4, ge=1, description="blocks per PPO mini-batch step")


class PpoSettings(StrictModel):
    """The PPO algorithm."""

    rollout_batch_size: int = Field(16, ge=1, description="prompts per iteration (global)")
    mini_batch_size: int = Field(8, ge=1, description="answers per optimiser step (global)")
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


class PpoEvaluation(StrictModel):
    """The final comparison of the SFT policy and the PPO policy on held-out prompts."""

    prompts: int = Field(64, ge=1, description="held-out prompts answered by both policies")
    samples: int = Field(8, ge=0, description="rows of the sample table kept in the manifest")
    seed: int = 1234


class PpoStage(StageConfig):
    """PPO against a frozen reward model, with a KL penalty to the frozen SFT policy (our own trainer)."""

    kind: Literal["ppo"]
    data: PromptData
    generation: GenerationSettings = GenerationSettings()
    ppo: PpoSettings = PpoSettings()
    evaluation: PpoEvaluation = PpoEvaluation()
    lora: LoraSettings | None = Field(None, description="train an adapter; the reference is the adapter switched off")
    train: TrainSettings = Field(description="max_steps = PPO iterations; batch_size is unused (see ppo.*)")

    module = "stages.ppo"
    headline = ("eval/ppo_score", "eval/win_rate", "eval/kl")
    live = ("score/mean", "kl/mean")
    # 2: the sample table holds greedy base, SFT and PPO answers, all scored
    # 3: policy and value in one module with one optimiser (one DeepSpeed engine); checkpoints of 2 do not load
    version = 3
    input_roles = {"policy": True, "reward": True}

    def input_problems(self) -> list[tuple[tuple, str]]:
        """Mini-batches that divide the rollout."""
        problems: list[tuple[tuple, str]] = []
        if self.ppo.rollout_batch_size % self.ppo.mini_batch_size:
            problems.append((("ppo", "mini_batch_size"), f"must divide ppo.rollout_batch_size ({self.ppo.rollout_batch_size})"))
        micro = self.ppo.micro_batch_size or self.ppo.mini_batch_size
        if self.ppo.mini_batch_size % micro:
            problems.append((("ppo", "micro_batch_size"), f"must divide ppo.mini_batch_size ({self.ppo.mini_batch_size})"))
        return problems

    def data_problems(self) -> list[str]:
        """Unreadable prompt files or rows, and an unreadable ptx corpus."""
        from stages.common.corpus import corpus_problems
        from stages.common.records import prompt_problems

        return prompt_problems(self.data.files()) + (corpus_problems(self.ppo.ptx.data) if self.ppo.ptx else [])


KINDS: dict[str, type[StageConfig]] = {"pretrain": PretrainStage, "sft": SftStage, "reward": RewardStage,
                                       "ppo": PpoStage}
