"""Direct preference optimisation: preference rows -> TRL's DPOTrainer -> HF causal LM.

    accelerate launch -m stages.dpo --config configs/pipelines/compare.yaml --stage dpo

The policy comes from `inputs.model` (an sft-like stage) or `model.path/gguf/hub`. The reference is the
same starting model (TRL copies it), another stage's model (`inputs.reference`), or with LoRA the policy with
its adapter switched off. Every preference shape is read by rows.records; rankings become prompt-weighted
pairs (stages.dpo.pairs). The Trainer owns checkpoints and resume, as in the sft stage; the artifact loads
with plain transformers (merged weights, and `adapter/` with LoRA).
"""

from __future__ import annotations

from transformers import set_seed
from trl import DPOConfig, DPOTrainer

from rows.messages import prompt_text
from rows.records import ranking_row
from stages.common.chat import (
    chat_dataset,
    generate_answers,
    sample_prompts,
)
from stages.common.entry import StageContext
from stages.common.hf_models import (
    gathered,
    hub_commit_of,
    parameter_count,
)
from stages.common.hf_trainer import attach, final_evaluation, quiet_libraries, training_arguments, training_metrics
from stages.common.lora import lora_config, save_trained_artifact
from stages.common.preference import policy_and_reference, preference_rows
from stages.dpo.config import DpoStage
from stages.dpo.pairs import prompt_weighted_pairs


def dpo_arguments(ctx: StageContext) -> DPOConfig:
    """TRL's DPOConfig for this stage (made before the models are loaded: under ZeRO-3 it registers
    DeepSpeed's config, so transformers loads them as partitions)."""
    cfg: DpoStage = ctx.config
    return training_arguments(
        ctx, cfg.train, config_class=DPOConfig,
        max_length=cfg.data.max_length,
        beta=cfg.dpo.beta,
        loss_type=cfg.dpo.losses(),
        loss_weights=cfg.dpo.loss_weights,
        label_smoothing=cfg.dpo.label_smoothing,
        precompute_ref_log_probs=cfg.dpo.precompute_ref_log_probs,
        dataset_num_proc=None,
        include_num_input_tokens_seen="non_padding",
    )


def build_trainer(ctx: StageContext, model, tokenizer, *, train_pairs: list[dict], val_pairs: list[dict], args: DPOConfig,
                  reference=None) -> DPOTrainer:
    """The DPOTrainer for this stage: conversational pairs, our checkpoints and log lines."""
    cfg: DpoStage = ctx.config
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=chat_dataset(train_pairs),
                         eval_dataset=chat_dataset(val_pairs), processing_class=tokenizer,
                         peft_config=lora_config(cfg.lora))
    return attach(trainer, ctx, cfg.train)


def train(ctx: StageContext) -> dict:
    """Optimise the policy on the pairs, evaluate on held-out pairs, sample and save; the manifest metrics."""
    cfg: DpoStage = ctx.config
    name = ctx.spec["stage"]
    quiet_libraries()
    set_seed(cfg.train.seed)

    rows = preference_rows(ctx, ranking_row)
    train_pairs = prompt_weighted_pairs(rows.train, cfg.train.seed)
    val_pairs = prompt_weighted_pairs(rows.validation, cfg.train.seed + 1)
    args = dpo_arguments(ctx)
    source, tokenizer, model, reference = policy_and_reference(
        ctx, precompute_ref_log_probs=cfg.dpo.precompute_ref_log_probs)
    n_params = parameter_count(model)
    print(f"[{name}] {len(rows.train)} train / {len(rows.validation)} validation prompts as {len(train_pairs)} / "
          f"{len(val_pairs)} pairs", flush=True)

    prompts = sample_prompts(rows, cfg.samples.count)
    with gathered(model):
        base_answers = generate_answers(model, tokenizer, prompts, max_new_tokens=cfg.samples.max_new_tokens)

    trainer = build_trainer(ctx, model, tokenizer, train_pairs=train_pairs, val_pairs=val_pairs, args=args,
                            reference=reference)
    result = trainer.train(resume_from_checkpoint=str(ctx.resume_from.path) if ctx.resume_from else None)
    evaluation = final_evaluation(trainer)
    tuned = trainer.accelerator.unwrap_model(trainer.model)
    dpo_answers = generate_answers(tuned, tokenizer, prompts, max_new_tokens=cfg.samples.max_new_tokens)

    save_trained_artifact(trainer, tokenizer, ctx.staged_artifact)
    return hub_commit_of(source) | {
        "eval/loss": evaluation["eval_loss"],
        "eval/reward_accuracy": evaluation["eval_rewards/accuracies"],
        "eval/reward_margin": evaluation["eval_rewards/margins"],
        "eval/chosen_reward": evaluation["eval_rewards/chosen"],
        "eval/rejected_reward": evaluation["eval_rewards/rejected"],
        **training_metrics(trainer, result, cfg.train, parameters=n_params),
        "train/tokens": trainer.state.num_input_tokens_seen,
        "data/train_prompts": len(rows.train),
        "data/train_pairs": len(train_pairs),
        "data/validation_pairs": len(val_pairs),
        "data/skipped_rows": rows.skipped,
        "samples": [{"prompt": prompt_text(p), "messages": p, "base": b, "dpo": d}
                    for p, b, d in zip(prompts, base_answers, dpo_answers)],
    }
