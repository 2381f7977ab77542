"""Reward model: K ranked answers per prompt -> K-wise ranking loss on the HF Trainer -> scalar scorer.

    accelerate launch -m stages.reward --config configs/pipelines/tiny.yaml --stage reward

As in InstructGPT, the reward model starts from a causal LM (usually the SFT stage's artifact) with a new
scalar head (`AutoModelForSequenceClassification`, one label, scored at the last non-pad token). Each
training example is one prompt with all its K answers: the collator flattens the answers of a batch into
one padded tensor, so the K answers of a prompt are scored in one forward pass and each answer once, and
the loss averages -log sigmoid(r_better - r_worse) over the prompt's untied pairs (K = 2 is pairwise data).
TRL's RewardTrainer takes chosen/rejected pairs only, so this is a Trainer subclass with its own loss.
"""

from __future__ import annotations

import contextlib
import math

import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification, Trainer, set_seed
from transformers.utils import logging

from rows.datasources import source_of
from rows.records import ranking_row
from stages.common.chat import check_context_length, input_model, load_chat_tokenizer, load_rows
from stages.common.entry import StageContext
from stages.common.hf_models import Loading, hub_commit_of, keep_one_layout, loaded_as, locate, parameter_count
from stages.common.hf_trainer import (
    attach,
    evaluate_before_training,
    final_evaluation,
    gradient_accumulation,
    quiet_libraries,
    training_arguments,
)
from stages.common.lora import lora_config, save_trained_artifact
from stages.common.ranking import kwise_ranking_loss, ranking_metrics, scores_by_prompt
from stages.common.scoring import encode_chats, pad_right
from stages.rank.artifact import RANKINGS_FILE
from stages.reward.config import RewardStage


def tokenize_rankings(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """Each row as {"input_ids": [ids of the rendered chat, per answer], "ranks": [...]}: the sequences that
    stages.common.scoring scores, so training, PPO and plain transformers read the same token."""
    prompts = [row["prompt"] for row in rows for _ in row["answers"]]
    answers = [answer for row in rows for answer in row["answers"]]
    ids = iter(encode_chats(tokenizer, prompts, answers, max_length=max_length))
    return [{"input_ids": [next(ids) for _ in row["answers"]], "ranks": row["ranks"]} for row in rows]


class RankingCollator:
    """Batch B prompts: all their answers as one right-padded [N, L] tensor, ranks as [B, K_max] (0 = empty)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_right([seq for ex in examples for seq in ex["input_ids"]], self.pad_token_id)
        k_max = max(len(ex["ranks"]) for ex in examples)
        ranks = torch.zeros((len(examples), k_max), dtype=torch.long)
        for row, ex in enumerate(examples):
            # shift so that every filled slot is > 0 (ranks may start at 0 or be negative in user data)
            r = torch.tensor(ex["ranks"])
            ranks[row, : len(r)] = r - r.min() + 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "ranks": ranks}


class RankingTrainer(Trainer):
    """The HF Trainer with the K-wise ranking loss; predictions are the scores as [B, K_max]."""

    def __init__(self, *args, margin: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.margin = margin
        # our loss is a mean over the micro batch's prompts: let the Trainer divide it by the accumulation steps
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: PLR0917 (Trainer's)
        """Score every answer of the batch in one forward, then the mean over prompts of their pair losses."""
        ranks = inputs["ranks"]
        flat = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.squeeze(-1)
        scores = scores_by_prompt(flat.float(), ranks)
        loss = kwise_ranking_loss(scores, ranks, self.margin)
        return (loss, {"scores": scores}) if return_outputs else loss


def compute_metrics(prediction) -> dict[str, float]:
    """Trainer hook: ranking metrics from the gathered [N, K] scores and ranks (-100 pads across batches)."""
    return ranking_metrics(prediction.predictions, prediction.label_ids)


def _number(value: float) -> float | None:
    """NaN (e.g. Kendall tau with no K > 2 prompt) as null: manifests are strict JSON."""
    return None if isinstance(value, float) and math.isnan(value) else value


@contextlib.contextmanager
def new_head_expected():
    """Silence transformers' load report while it adds the new scalar head (and drops the LM head)."""
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def evaluate_by_source(trainer: Trainer, by_source: dict[str, list[dict]], *, tokenizer, max_length: int) -> dict:
    """Ranking metrics per held-out source when there are several (a mix can hide one it does not learn):
    `eval/<source>/pairwise_accuracy`, ... in the manifest, `eval_<source>_...` in metrics.jsonl."""
    if len(by_source) < 2:
        return {}
    metrics = {}
    for label, source_rows in by_source.items():
        dataset = Dataset.from_list(tokenize_rankings(source_rows, tokenizer, max_length))
        prefix = f"eval_{label}"
        result = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
        metrics.update({f"eval/{label}/{key}": _number(result[f"{prefix}_{key}"]) for key in
                        ("pairwise_accuracy", "margin", "ranking_accuracy", "kendall_tau")})
    return metrics


def train(ctx: StageContext) -> dict:
    """Train the reward model, evaluate it on held-out rankings and save it; return the manifest metrics."""
    cfg: RewardStage = ctx.config
    name = ctx.spec["stage"]
    quiet_libraries()
    set_seed(cfg.train.seed)

    # data: prompts with ranked answers (bad rows refused, or skipped and counted)
    data = cfg.data
    if "rankings" in ctx.inputs:  # a rank stage's labels join the training files
        ranked = source_of(ctx.inputs["rankings"] / RANKINGS_FILE)
        data = data.model_copy(update={"train": [*data.train, ranked]})
    rows = load_rows(data, ranking_row, cfg.train.seed, skip_bad_rows=cfg.data.skip_bad_rows)
    train_rows, val_rows = rows.train, rows.validation
    if rows.skipped:
        print(f"[{name}] skipped {rows.skipped} bad rows (data.skip_bad_rows)", flush=True)

    # model: the input causal LM with a new scalar head, and its tokenizer with the chat template (the
    # training arguments first: under ZeRO-3 they make transformers load the model as partitions)
    args = training_arguments(ctx, cfg.train, remove_unused_columns=False, label_names=["ranks"],
                              include_num_input_tokens_seen="non_padding")
    source, loading = input_model(ctx), Loading.of(cfg.model)
    check_context_length(source, cfg.data.max_length, "data.max_length", loading=loading)
    tokenizer = load_chat_tokenizer(source, cfg.chat_template, loading)
    with new_head_expected():
        where, kwargs = locate(source)
        model = keep_one_layout(AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=1, **kwargs, **loading.trained_model_kwargs()))
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.lora is not None:
        model = get_peft_model(model, lora_config(cfg.lora, task_type="SEQ_CLS"))
    train_set = Dataset.from_list(tokenize_rankings(train_rows, tokenizer, cfg.data.max_length))
    val_set = Dataset.from_list(tokenize_rankings(val_rows, tokenizer, cfg.data.max_length))
    n_answers = sum(len(r["answers"]) for r in train_rows)
    print(f"[{name}] {parameter_count(model) / 1e6:.2f} M parameters from {source}{loaded_as(model)}; "
          f"{len(train_rows)} train prompts ({n_answers} answers) / {len(val_rows)} validation prompts", flush=True)

    # train: one example = one prompt with all its answers
    trainer = attach(RankingTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=RankingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        margin=cfg.margin,
    ), ctx, cfg.train)
    base = evaluate_before_training(trainer)  # the new head on the input model: near chance
    result = trainer.train(resume_from_checkpoint=str(ctx.resume_from.path) if ctx.resume_from else None)
    evaluation = final_evaluation(trainer)

    by_source = evaluate_by_source(trainer, rows.validation_by_source, tokenizer=tokenizer,
                                   max_length=cfg.data.max_length)

    # artifact: sequence classifier (one scalar) + tokenizer with the chat template (LoRA: merged, adapter kept)
    save_trained_artifact(trainer, tokenizer, ctx.staged_artifact)
    micro, accumulation = gradient_accumulation(cfg.train, trainer.accelerator.num_processes)
    return hub_commit_of(source) | {
        **{f"eval/{key}": _number(evaluation[f"eval_{key}"])
           for key in ("loss", "pairwise_accuracy", "margin", "ranking_accuracy", "kendall_tau")},
        **by_source,
        "eval/base_pairwise_accuracy": base.get("eval_pairwise_accuracy"),
        "train/loss": result.training_loss,
        "train/steps": trainer.state.global_step,
        "train/runtime_s": result.metrics.get("train_runtime"),
        "train/tokens": trainer.state.num_input_tokens_seen,  # real (non-padding) tokens of every answer
        "train/effective_batch": micro * accumulation * trainer.accelerator.num_processes,
        "data/train_prompts": len(train_rows),
        "data/train_answers": n_answers,
        "data/validation_prompts": len(val_rows),
        "data/skipped_rows": rows.skipped,
    }

