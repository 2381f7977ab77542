"""Supervised fine-tuning: chat data -> TRL SFTTrainer (answer-only loss) -> HF causal LM with a chat template.

    accelerate launch -m stages.sft --config configs/pipelines/tiny.yaml --stage sft

The model comes from `inputs.model` (e.g. the pretrain stage) or `model.path`. Every row is turned into a
chat prompt and its answer (or stays plain text: language modelling); the tokenizer gets our chat template
when it has none. By default the loss covers the last answer only (TRL's completion mask: the prompt is
context); `loss_on: assistant` covers every assistant turn (TRL's assistant mask, from the template's
{% generation %} markers); `loss_on: all` trains on the whole sequence. With `lora`, a peft adapter is trained, kept in `artifact/adapter/`, and
merged into the saved weights so the artifact loads with plain transformers.
"""

from __future__ import annotations

import math

import torch
from transformers import Trainer, set_seed
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from core.errors import InputError
from rows.messages import prompt_text
from rows.records import sft_row
from stages.common.chat import (
    chat_dataset,
    check_context_length,
    generate_answers,
    input_model,
    load_chat_tokenizer,
    load_rows,
    sample_prompts,
)
from stages.common.entry import StageContext
from stages.common.hf_models import Loading, gathered, hub_commit_of, load_causal_lm, loaded_as, parameter_count
from stages.common.hf_trainer import (
    attach,
    evaluate_before_training,
    final_evaluation,
    quiet_libraries,
    training_arguments,
    training_metrics,
)
from stages.common.lora import lora_config, save_trained_artifact
from stages.sft.config import SftStage


class AnswerOnlySFTTrainer(SFTTrainer):
    """TRL's SFTTrainer, with the model's own causal-LM loss on machines without CUDA.

    TRL computes the loss through a fused LM head (tiled log-probs, no full logits). Its torch fallback for
    CPU measured 2.6x slower per step here than the model's own loss, with identical losses. The labels
    (prompt masked) are the same either way; only TRL's token-accuracy and entropy logs are lost on CPU.
    Real tokens trained on are the Trainer's own count (`include_num_input_tokens_seen="non_padding"`), which
    is right for row-packed batches too (RowPackedCollator pads only outside the packed sequences).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: PLR0917 (Trainer's)
        if torch.cuda.is_available():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # no KV cache (as TRL does): with one, transformers ignores the position_ids that keep packed examples
        # apart, and they would attend to each other
        return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch)


class RowPackedCollator:
    """Packed bins as rows of their own, for attention kernels without variable-length support.

    TRL's BFD packing flattens a whole batch into ONE row for FlashAttention's varlen kernels. With SDPA or
    eager attention (CPU, and GPUs without flash-attn) that row is batch x max_length long, so attention costs
    (B*L)^2 instead of B*L^2. Here each bin stays a row (TRL's collator prepares each one: labels, position
    ids restarting at every packed sequence); rows are right-padded and sent without an attention mask, so
    transformers builds a block-diagonal causal mask from the position ids: packed sequences never see each
    other. Padding gets its own position block and label -100.
    """

    def __init__(self, trl_collator, pad_token_id: int):
        self.trl_collator, self.pad_token_id = trl_collator, pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = [self.trl_collator([example]) for example in examples]
        width = max(row["input_ids"].shape[1] for row in rows)

        def padded(key: str, value: int | None) -> torch.Tensor:
            out = []
            for row in rows:
                tensor = row[key][0]
                extra = width - tensor.shape[0]
                fill = torch.arange(extra) if value is None else torch.full((extra,), value)
                out.append(torch.cat([tensor, fill.to(tensor.dtype)]))
            return torch.stack(out)

        return {"input_ids": padded("input_ids", self.pad_token_id), "labels": padded("labels", -100),
                "position_ids": padded("position_ids", None)}


def sft_arguments(ctx: StageContext, text_rows: bool = False) -> SFTConfig:
    """TRL's SFTConfig for this stage. Made before the model is loaded: under ZeRO-3 it registers DeepSpeed's
    config, so that transformers loads the model as partitions (zero.Init), never whole on every process."""
    cfg: SftStage = ctx.config
    return training_arguments(
        ctx, cfg.train, config_class=SFTConfig,
        max_length=cfg.data.max_length,
        packing=cfg.data.packing,
        completion_only_loss=cfg.loss_on == "completion" and not text_rows,
        assistant_only_loss=cfg.loss_on == "assistant",
        dataset_num_proc=None,
        eval_packing=False,  # validation loss per example, comparable with and without packing
        include_num_input_tokens_seen="non_padding",
    )


def trl_rows(rows: list[dict], loss_on: str) -> list[dict]:
    """Rows as TRL takes them: prompt/completion (the completion's loss, or all), whole conversations for
    `loss_on: assistant` (TRL masks everything but the assistant turns), text rows as they are."""
    if loss_on != "assistant":
        return rows
    return [{"messages": row["prompt"] + row["completion"], **({"tools": row["tools"]} if "tools" in row else {})}
            for row in rows]


def check_assistant_masks(tokenizer, name: str) -> None:
    """`loss_on: assistant` needs a chat template with {% generation %} markers, or one TRL can swap in; refuse
    before the model is loaded when there is neither."""
    if has_generation_markers(tokenizer.chat_template):
        return
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        raise InputError(f"stage {name}: loss_on: assistant needs a chat template with {{% generation %}} markers; "
                         "the model's template has none and TRL has no training version of it: set chat_template: "
                         "default, or a .jinja file with the markers") from None


def build_trainer(ctx: StageContext, model, tokenizer, *, rows, args: SFTConfig) -> AnswerOnlySFTTrainer:
    """The SFTTrainer for this stage's config: chat-formatted rows, answer-only labels, our checkpoints."""
    cfg: SftStage = ctx.config
    trainer = AnswerOnlySFTTrainer(
        model=model,
        args=args,
        train_dataset=chat_dataset(trl_rows(rows.train, cfg.loss_on)),
        eval_dataset=chat_dataset(trl_rows(rows.validation, cfg.loss_on)),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
    )
    if trainer.padding_free and "flash" not in (model.config._attn_implementation or ""):
        trainer.data_collator = RowPackedCollator(trainer.data_collator, tokenizer.pad_token_id)
    return attach(trainer, ctx, cfg.train)


def train(ctx: StageContext) -> dict:
    """Fine-tune, evaluate, sample and save; return the manifest metrics."""
    cfg: SftStage = ctx.config
    name = ctx.spec["stage"]
    quiet_libraries()
    set_seed(cfg.train.seed)

    # data: every row as a chat prompt and its answer, or plain text
    rows = load_rows(cfg.data, sft_row, cfg.train.seed)
    train_rows, val_rows = rows.train, rows.validation
    earlier = sum(any(m["role"] == "assistant" for m in row.get("prompt", [])) for row in train_rows)
    if earlier and cfg.loss_on == "completion":
        print(f"[{name}] {earlier} of {len(train_rows)} training conversations have earlier assistant turns: with "
              "loss_on: completion they are context, only the last answer is trained (loss_on: assistant trains "
              "every assistant turn)", flush=True)

    # model and tokenizer (with a chat template)
    args = sft_arguments(ctx, text_rows="text" in train_rows[0])
    source, loading = input_model(ctx), Loading.of(cfg.model)
    check_context_length(source, cfg.data.max_length, "data.max_length", loading=loading)
    tokenizer = load_chat_tokenizer(source, cfg.chat_template, loading)
    if cfg.loss_on == "assistant":
        check_assistant_masks(tokenizer, name)
    model = load_causal_lm(source, loading)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    n_params = parameter_count(model)
    print(f"[{name}] {n_params / 1e6:.2f} M parameters from {source}{loaded_as(model)}; {len(train_rows)} train / "
          f"{len(val_rows)} validation examples{', LoRA r=%d' % cfg.lora.r if cfg.lora else ''}", flush=True)

    prompts = sample_prompts(rows, cfg.samples.count)
    with gathered(model):
        base_answers = generate_answers(model, tokenizer, prompts, max_new_tokens=cfg.samples.max_new_tokens)

    # train (SFTTrainer tokenizes with the template, masks the prompt, pads or packs)
    trainer = build_trainer(ctx, model, tokenizer, rows=rows, args=args)
    base_eval = evaluate_before_training(trainer)  # the input model: a checkpoint is loaded by train()
    result = trainer.train(resume_from_checkpoint=str(ctx.resume_from.path) if ctx.resume_from else None)
    evaluation = final_evaluation(trainer)

    # samples from the fine-tuned model on the same held-out prompts
    tuned = trainer.accelerator.unwrap_model(trainer.model)
    sft_answers = generate_answers(tuned, tokenizer, prompts, max_new_tokens=cfg.samples.max_new_tokens)

    # artifact: causal LM + tokenizer with the chat template (adapter alongside with LoRA)
    save_trained_artifact(trainer, tokenizer, ctx.staged_artifact)
    return hub_commit_of(source) | {
        "eval/loss": evaluation["eval_loss"],
        "eval/perplexity": math.exp(evaluation["eval_loss"]),
        **training_metrics(trainer, result, cfg.train, parameters=n_params),
        "train/tokens": trainer.state.num_input_tokens_seen,  # real (non-padding) tokens, across resumes
        "data/train_examples": len(train_rows),
        "data/validation_examples": len(val_rows),
        "eval/base_loss": base_eval.get("eval_loss"),
        # "messages": the prompt as the chat template gets it, so PPO can answer the same prompts
        "samples": [{"prompt": prompt_text(p), "messages": p, "base": b, "sft": s}
                    for p, b, s in zip(prompts, base_answers, sft_answers)],
    }

