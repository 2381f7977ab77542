"""KTO: answers labelled desirable or not -> TRL's KTOTrainer -> HF causal LM.

    accelerate launch -m stages.kto --config PIPELINE.yaml --stage kto

As the dpo stage (stages.common.preference), on unpaired rows: `{prompt, completion, label}`, or rankings split
at their median rank (rows.records.unpaired_row).
"""

from __future__ import annotations

from transformers import set_seed
from trl import KTOConfig, KTOTrainer

from rows.messages import prompt_text
from rows.records import unpaired_row
from stages.common.chat import chat_dataset, generate_answers, sample_prompts
from stages.common.entry import StageContext
from stages.common.hf_models import gathered, hub_commit_of, parameter_count
from stages.common.hf_trainer import attach, final_evaluation, quiet_libraries, training_arguments, training_metrics
from stages.common.lora import lora_config, save_trained_artifact
from stages.common.preference import policy_and_reference, preference_rows
from stages.kto.config import KtoStage
from stages.kto.examples import labelled


def train(ctx: StageContext) -> dict:
    """Optimise the policy on the labelled answers, evaluate on held-out ones, sample and save."""
    cfg: KtoStage = ctx.config
    quiet_libraries()
    set_seed(cfg.train.seed)
    rows = preference_rows(ctx, unpaired_row)
    train_rows = labelled(rows.train, seed=cfg.train.seed)
    val_rows = labelled(rows.validation, seed=cfg.train.seed)
    args = training_arguments(
        ctx, cfg.train, config_class=KTOConfig, max_length=cfg.data.max_length, beta=cfg.kto.beta,
        loss_type=cfg.kto.loss_type, desirable_weight=cfg.kto.desirable_weight,
        undesirable_weight=cfg.kto.undesirable_weight, precompute_ref_log_probs=cfg.kto.precompute_ref_log_probs,
        dataset_num_proc=None)
    source, tokenizer, model, reference = policy_and_reference(
        ctx, precompute_ref_log_probs=cfg.kto.precompute_ref_log_probs)
    n_params = parameter_count(model)
    prompts = sample_prompts(rows, cfg.samples.count)
    with gathered(model):
        base_answers = generate_answers(model, tokenizer, prompts, max_new_tokens=cfg.samples.max_new_tokens)

    trainer = attach(KTOTrainer(model=model, ref_model=reference, args=args, train_dataset=chat_dataset(train_rows),
                                eval_dataset=chat_dataset(val_rows), processing_class=tokenizer,
                                peft_config=lora_config(cfg.lora)), ctx, cfg.train)
    result = trainer.train(resume_from_checkpoint=str(ctx.resume_from.path) if ctx.resume_from else None)
    evaluation = final_evaluation(trainer)
    tuned = trainer.accelerator.unwrap_model(trainer.model)
    kto_answers = generate_answers(tuned, tokenizer, prompts, max_new_tokens=cfg.samples.max_new_tokens)
    save_trained_artifact(trainer, tokenizer, ctx.staged_artifact)

    return hub_commit_of(source) | {
        "eval/loss": evaluation["eval_loss"],
        "eval/reward_margin": evaluation.get("eval_rewards/margins"),
        "eval/chosen_reward": evaluation.get("eval_rewards/chosen"),
        "eval/rejected_reward": evaluation.get("eval_rewards/rejected"),
        "eval/kl": evaluation.get("eval_kl"),
        **training_metrics(trainer, result, cfg.train, parameters=n_params),
        "data/train_prompts": len(rows.train),
        "data/train_answers": len(train_rows),
        "data/desirable_fraction": sum(r["label"] for r in train_rows) / max(1, len(train_rows)),
        "data/validation_answers": len(val_rows),
        "data/skipped_rows": rows.skipped,
        "samples": [{"prompt": prompt_text(p), "messages": p, "base": b, "kto": k}
                    for p, b, k in zip(prompts, base_answers, kto_answers)],
    }
