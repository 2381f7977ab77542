"""Causal-LM pretraining: tokenizer -> model -> packed blocks -> Trainer -> HF artifact.

    accelerate launch -m stages.pretrain --config configs/pipelines/tiny.yaml --stage pretrain

The model starts from `model.init` (random weights, Llama-style), from `model.path` (an HF directory) or
from `inputs.model` (another stage's artifact: continued pretraining). With `model.tokenizer`, a byte-level
BPE is first trained on the training corpus. Text is packed into `block_size` blocks with EOS between
documents (no padding); validation documents are held out before packing and give the perplexity.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    default_data_collator,
    set_seed,
)

from core.errors import InputError
from rows.corpus import read_documents
from stages.common.chat import weighted
from stages.common.entry import StageContext
from stages.common.hf_models import (
    Loading,
    ModelRef,
    fit_tokenizer_to,
    hub_commit_of,
    load_causal_lm,
    load_tokenizer,
    loaded_as,
    model_ref,
    parameter_count,
    resolve_hub,
)
from stages.common.hf_trainer import attach, final_evaluation, quiet_libraries, save_artifact, training_arguments
from stages.pretrain.config import PretrainStage

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"


def train_tokenizer(documents: list[str], vocab_size: int, min_frequency: int):
    """A byte-level BPE (GPT-2 style) trained on `documents`, wrapped for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, BOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=None, model_max_length=1_000_000)


def continued_model(ctx: StageContext, cfg: PretrainStage) -> ModelRef | None:
    """The model pretraining continues from (the input stage's artifact, or model.path / gguf / hub pinned to
    its commit); None for a new model."""
    if "model" in ctx.inputs:
        return ctx.inputs["model"]
    return resolve_hub(model_ref(cfg.model.source())) if cfg.model.source() else None


def stage_tokenizer(ctx: StageContext, cfg: PretrainStage, documents: list[str], *, source: ModelRef | None):
    """The tokenizer: the checkpoint's when resuming, else the continued model's, the given one, or a new one."""
    if ctx.resume_from is not None:
        source = ctx.resume_from.path
    elif source is None and cfg.model.tokenizer_path:
        source = Path(cfg.model.tokenizer_path)
    elif source is None:
        return train_tokenizer(documents, cfg.model.tokenizer.vocab_size, cfg.model.tokenizer.min_frequency)
    tokenizer = load_tokenizer(source, Loading.of(cfg.model))
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": EOS})
    return tokenizer


def build_model(cfg: PretrainStage, tokenizer, source: ModelRef | None):
    """A new Llama-style model from `model.init`, or the pretrained one to continue from."""
    loading = Loading.of(cfg.model)
    if cfg.model.init is None:
        model = load_causal_lm(source, loading)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        return model
    arch = cfg.model.init
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads or arch.num_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings or cfg.data.block_size,
        tie_word_embeddings=arch.tie_word_embeddings,
        rope_theta=arch.rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({"attn_implementation": loading.attn_implementation} if loading.attn_implementation else {}),
    )
    # built whole even under ZeRO-3 (the Trainer partitions it): zero.Init would draw the random weights in
    # another order, and a new model would not start from the same weights under every launch
    return LlamaForCausalLM(config).to(loading.dtype)


def packed_blocks(documents: list[str], tokenizer, block_size: int):
    """A datasets.Dataset of `block_size` token blocks: documents joined by EOS, the remainder dropped."""
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]  # longer than the model: packed
        return {"input_ids": [row + [eos] for row in ids]}

    def pack(batch):
        stream = [token for row in batch["input_ids"] for token in row]
        usable = len(stream) - len(stream) % block_size
        blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    text = Dataset.from_dict({"text": documents})
    tokens = text.map(tokenize, batched=True, remove_columns=["text"])
    # one batch holds the whole stream, so only the very last partial block is dropped
    return tokens.map(pack, batched=True, batch_size=len(tokens), remove_columns=["input_ids"])


def split_documents(cfg: PretrainStage) -> tuple[list[str], list[str]]:
    """(train, validation) documents: the validation sources, or a seeded fraction of each training source
    held out by document (before weighting, so a repeated document never lands on both sides); training
    sources mixed by weight."""
    rng = random.Random(cfg.train.seed)
    per_source = [read_documents(source) for source in cfg.data.train]
    if cfg.data.validation:
        validation = [d for source in cfg.data.validation for d in read_documents(source)]
    else:
        validation = []
        for i, docs in enumerate(per_source):
            order = list(range(len(docs)))
            rng.shuffle(order)
            held = set(order[: max(1, round(len(docs) * cfg.data.validation_fraction))])
            validation += [d for j, d in enumerate(docs) if j in held]
            per_source[i] = [d for j, d in enumerate(docs) if j not in held]
    train = [d for docs, source in zip(per_source, cfg.data.train) for d in weighted(docs, source.weight, rng)]
    return train, validation


def train(ctx: StageContext) -> dict:
    """Train, evaluate and save the artifact; return the manifest metrics."""
    cfg: PretrainStage = ctx.config
    quiet_libraries()
    set_seed(cfg.train.seed)

    # data and tokenizer
    train_docs, val_docs = split_documents(cfg)
    source = continued_model(ctx, cfg)
    tokenizer = stage_tokenizer(ctx, cfg, train_docs, source=source)
    train_blocks = packed_blocks(train_docs, tokenizer, cfg.data.block_size)
    val_blocks = packed_blocks(val_docs, tokenizer, cfg.data.block_size)
    if len(train_blocks) == 0 or len(val_blocks) == 0:
        raise InputError(f"stage {ctx.spec['stage']}: data.block_size {cfg.data.block_size} leaves "
                         f"{len(train_blocks)} training and {len(val_blocks)} validation blocks; use more text "
                         "or a smaller block_size")

    # model (the training arguments first: under ZeRO-3 they make transformers build it as partitions)
    args = training_arguments(ctx, cfg.train)
    model = build_model(cfg, tokenizer, source)
    fit_tokenizer_to(tokenizer, model)
    n_params = parameter_count(model)
    print(f"[{ctx.spec['stage']}] {n_params / 1e6:.2f} M parameters{loaded_as(model)}, vocab {len(tokenizer)}, "
          f"{len(train_blocks)} train / {len(val_blocks)} validation blocks of {cfg.data.block_size} tokens", flush=True)

    # train (the Trainer restores weights, optimizer, scheduler, RNG and data position when resuming)
    trainer = attach(Trainer(
        model=model,
        args=args,
        train_dataset=train_blocks,
        eval_dataset=val_blocks,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    ), ctx, cfg.train)
    result = trainer.train(resume_from_checkpoint=str(ctx.resume_from.path) if ctx.resume_from else None)
    evaluation = final_evaluation(trainer)

    # artifact: weights + config + tokenizer, loadable by AutoModelForCausalLM / AutoTokenizer alone
    save_artifact(trainer, ctx.staged_artifact)
    tokens_per_step = cfg.train.batch_size * cfg.data.block_size
    return hub_commit_of(source) | {
        "eval/loss": evaluation["eval_loss"],
        "eval/perplexity": math.exp(evaluation["eval_loss"]),
        "train/loss": result.training_loss,
        "train/steps": trainer.state.global_step,
        "train/tokens": trainer.state.global_step * tokens_per_step,
        "train/runtime_s": result.metrics.get("train_runtime"),
        "model/parameters": n_params,
        "data/train_blocks": len(train_blocks),
        "data/validation_blocks": len(val_blocks),
    }

