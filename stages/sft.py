"""Supervised fine-tuning: chat data -> TRL SFTTrainer (answer-only loss) -> HF causal LM with a chat template.

    accelerate launch -m stages.sft --config configs/pipelines/tiny.yaml --stage sft

The model comes from `inputs.model` (e.g. the pretrain stage) or `model.path`. Every row is turned into a
chat prompt and one assistant answer; the tokenizer gets our chat template when it has none. By default
the loss covers the answer tokens only (TRL's completion mask: the prompt is context); `loss_on: all`
trains on the whole sequence. With `lora`, a peft adapter is trained, kept in `artifact/adapter/`, and
merged into the saved weights so the artifact loads with plain transformers.
"""

from __future__ import annotations

import math

import torch
from transformers import Trainer
from trl import SFTTrainer

from pipeline.kinds import SftStage
from stages.common.chat import (
    check_context_length,
    generate_answers,
    input_model,
    load_chat_tokenizer,
    load_rows,
    prompt_text,
    sample_prompts,
)
from stages.common.entry import StageContext, run_stage
from stages.common.lora import lora_config, save_merged
from stages.common.records import sft_row


class AnswerOnlySFTTrainer(SFTTrainer):
    """TRL's SFTTrainer, with the model's own causal-LM loss on machines without CUDA.

    TRL computes the loss through a fused LM head (tiled log-probs, no full logits). Its torch fallback for
    CPU measured 2.6x slower per step here than the model's own loss, with identical losses. The labels
    (prompt masked) are the same either way; only TRL's token-accuracy and entropy logs are lost on CPU.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if torch.cuda.is_available():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # no KV cache (as TRL does): with one, transformers ignores the position_ids that keep packed examples
        # apart, and they would attend to each other
        return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch)


def save_sft_artifact(trainer, tokenizer, directory) -> None:
    """Full weights + tokenizer; with LoRA, the weights merged and the adapter in `adapter/`."""
    from accelerate import PartialState

    from stages.common.hf_trainer import save_artifact

    model = trainer.accelerator.unwrap_model(trainer.model)
    if not hasattr(model, "merge_and_unload"):
        save_artifact(trainer, directory)
    elif PartialState().is_main_process:
        save_merged(model, tokenizer, directory)


def build_trainer(ctx: StageContext, model, tokenizer, rows) -> AnswerOnlySFTTrainer:
    """The SFTTrainer for this stage's config: chat-formatted rows, answer-only labels, our checkpoints."""
    from datasets import Dataset
    from trl import SFTConfig

    from stages.common.hf_trainer import attach, training_arguments

    cfg: SftStage = ctx.config
    args = training_arguments(
        ctx, cfg.train, config_class=SFTConfig,
        max_length=cfg.data.max_length,
        packing=cfg.data.packing,
        completion_only_loss=cfg.loss_on == "completion",
        dataset_num_proc=None,
        eval_packing=False,  # validation loss per example, comparable with and without packing
    )
    return attach(AnswerOnlySFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows.train),
        eval_dataset=Dataset.from_list(rows.validation),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
    ), ctx, cfg.train)


def train(ctx: StageContext) -> dict:
    """Fine-tune, evaluate, sample and save; return the manifest metrics."""
    from transformers import set_seed

    from stages.common.hf_models import load_causal_lm

    from stages.common.hf_trainer import evaluate_before_training, gradient_accumulation, quiet_libraries

    cfg: SftStage = ctx.config
    name = ctx.spec["stage"]
    quiet_libraries()
    set_seed(cfg.train.seed)

    # data: every row as a chat prompt and one assistant answer
    rows = load_rows(cfg.data, sft_row, cfg.train.seed)
    train_rows, val_rows = rows.train, rows.validation

    # model and tokenizer (with a chat template)
    source = input_model(ctx)
    check_context_length(source, cfg.data.max_length, "data.max_length")
    tokenizer = load_chat_tokenizer(source, cfg.chat_template)
    model = load_causal_lm(source)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] {n_params / 1e6:.2f} M parameters from {source}; {len(train_rows)} train / "
          f"{len(val_rows)} validation examples{', LoRA r=%d' % cfg.lora.r if cfg.lora else ''}", flush=True)

    prompts = sample_prompts(rows, cfg.samples.count)
    base_answers = generate_answers(model, tokenizer, prompts, cfg.samples.max_new_tokens)

    # train (SFTTrainer tokenizes with the template, masks the prompt, pads or packs)
    trainer = build_trainer(ctx, model, tokenizer, rows)
    base_eval = evaluate_before_training(trainer)  # the input model: a checkpoint is loaded by train()
    result = trainer.train(resume_from_checkpoint=str(ctx.resume_from.path) if ctx.resume_from else None)
    evaluation = trainer.evaluate()

    # samples from the fine-tuned model on the same held-out prompts
    tuned = trainer.accelerator.unwrap_model(trainer.model)
    sft_answers = generate_answers(tuned, tokenizer, prompts, cfg.samples.max_new_tokens)

    # artifact: causal LM + tokenizer with the chat template (adapter alongside with LoRA)
    save_sft_artifact(trainer, tokenizer, ctx.staged_artifact)
    micro, accumulation = gradient_accumulation(cfg.train, trainer.accelerator.num_processes)
    return {
        "eval/loss": evaluation["eval_loss"],
        "eval/perplexity": math.exp(evaluation["eval_loss"]),
        "train/loss": result.training_loss,
        "train/steps": trainer.state.global_step,
        "train/runtime_s": result.metrics.get("train_runtime"),
        "train/effective_batch": micro * accumulation * trainer.accelerator.num_processes,
        "model/parameters": n_params,
        "model/trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "data/train_examples": len(train_rows),
        "data/validation_examples": len(val_rows),
        "eval/base_loss": base_eval.get("eval_loss"),
        # "messages": the prompt as the chat template gets it, so PPO can answer the same prompts
        "samples": [{"prompt": prompt_text(p), "messages": p, "base": b, "sft": s}
                    for p, b, s in zip(prompts, base_answers, sft_answers)],
    }


if __name__ == "__main__":
    run_stage(train)
