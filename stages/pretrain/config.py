"""The `pretrain` kind's config: causal-LM pretraining on packed blocks of a text corpus (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.schema import DirPath, Panel, StageConfig, StrictModel
from rows.corpus import corpus_problems
from rows.datasources import DataSources
from sections.common import (
    ModelSource,
    Problems,
    TrainSettings,
    loss_findings,
    one_model_source,
    source_positions,
    too_long,
)


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


class PretrainModel(ModelSource):
    """Where the model starts: a new one from `init`, or an existing one (`path`, `gguf`, `hub`).

    With `inputs.model` (continued pretraining from another stage) leave them all out.
    """

    init: ModelArchitecture | None = None
    tokenizer: TokenizerTraining | None = Field(None, description="with `init`: train a tokenizer")
    tokenizer_path: DirPath | None = Field(None, description="with `init`: use this tokenizer instead")


class PretrainData(StrictModel):
    """Plain-text corpus: .txt (paragraphs separated by blank lines), or any row source (.jsonl, .parquet, a
    folder, a Hub dataset) with a "text" column (`columns: {content: text}` renames another)."""

    train: DataSources = Field(min_length=1, description="corpus sources, mixed by weight")
    validation: DataSources = []
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
    about = ("Causal language modelling on packed blocks of the corpus. Lower is better; the validation loss is "
             "measured on held-out blocks.")
    panels = (Panel("", "loss (nats per token)", (("loss", "train"), ("eval_loss", "validation"))),)

    def input_problems(self) -> Problems:
        """Exactly one model source; a tokenizer only when the model is new; sane head counts."""
        problems = one_model_source(self, self.model, extra=(("model.init", self.model.init),))
        arch = self.model.init
        if arch is not None:
            if (self.model.tokenizer is None) == (self.model.tokenizer_path is None):
                problems.append((("model",), "a new model (model.init) needs exactly one of model.tokenizer, model.tokenizer_path"))
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
        return problems + self.train.batch_problems() + self.model.loading_problems()

    def data_problems(self) -> list[str]:
        """Unreadable, non-UTF-8 or empty corpus files."""
        return corpus_problems(self.data.train + self.data.validation)

    def output_positions(self, upstream: dict[str, int | None]) -> int | None:
        """A new model's positions (model.init, default data.block_size), or those of the model it continues."""
        if self.model.init is not None:
            return self.model.init.max_position_embeddings or self.data.block_size
        return upstream.get("model") if "model" in self.inputs else source_positions(self.model.source())

    def length_problems(self, upstream: dict[str, int | None]) -> Problems:
        """Blocks longer than a continued model's positions."""
        if self.model.init is not None:
            return []
        return too_long(("data", "block_size"), self.data.block_size, self.output_positions(upstream),
                        what="data.block_size")

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Validation loss and perplexity, and the input model's loss when measured."""
        return loss_findings(metrics)

