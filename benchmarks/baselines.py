"""Plain library baselines, as a user would write them without this project: the Hugging Face Trainer for
pretraining, TRL's SFTTrainer for SFT, TRL's RewardTrainer on pairs for the reward model. Each gets the
same model, data, batch, steps and checkpoint cadence as our stage, and reports the library's own
`train_runtime` (the training loop, as our manifests do)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    """A training loop's runtime and how much it processed."""

    runtime_s: float
    units: float  # tokens, or ranked prompts
    steps: int

    @property
    def rate(self) -> float:
        return self.units / self.runtime_s


def _common_args(config: dict, out: str, **more) -> dict:
    """TrainingArguments values shared with our stage's config (global batch, schedule, seed)."""
    train = config["train"]
    return dict(output_dir=out, max_steps=train["max_steps"], per_device_train_batch_size=train["batch_size"],
                learning_rate=train["learning_rate"], lr_scheduler_type=train["lr_scheduler"],
                warmup_steps=train["warmup_steps"], weight_decay=train["weight_decay"], adam_beta1=train["adam_beta1"],
                adam_beta2=train["adam_beta2"], max_grad_norm=train["max_grad_norm"], seed=train["seed"],
                logging_steps=train["log_every"], save_strategy="steps", save_steps=train["save_every"],
                bf16=train["precision"] == "bf16", fp16=train["precision"] == "fp16",
                report_to=[], disable_tqdm=True, dataloader_num_workers=0, **more)


def _quiet(trainer):
    """No printed log dicts (the Trainer prints them when tqdm is off)."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


#: TRL's configs switch activation recomputation on by default; our stages (and these runs) do not recompute
NO_RECOMPUTE = {"gradient_checkpointing": None, "activation_checkpointing": False}


def hf_trainer_pretrain(manifest: dict, artifact: Path) -> Measured:
    """`Trainer` on the same packed blocks, a fresh model of the same architecture, the same tokenizer."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from stages.pretrain.config import PretrainStage
    from stages.pretrain.stage import packed_blocks, split_documents

    cfg = PretrainStage.model_validate(manifest["config"])
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    blocks = packed_blocks(split_documents(cfg)[0], tokenizer, cfg.data.block_size)
    set_seed(cfg.train.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(artifact))
    with tempfile.TemporaryDirectory() as out:
        trainer = _quiet(Trainer(model=model, args=TrainingArguments(**_common_args(manifest["config"], out)),
                                 train_dataset=blocks, data_collator=default_data_collator))
        result = trainer.train()
    steps = trainer.state.global_step
    return Measured(result.metrics["train_runtime"], steps * cfg.train.batch_size * cfg.data.block_size, steps)


def trl_sft(manifest: dict, model_dir: Path, packing: bool) -> Measured:
    """TRL's `SFTTrainer` as documented: prompt/completion chat rows, loss on the completion."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    from rows.records import sft_row
    from stages.common.chat import load_chat_tokenizer, load_rows
    from stages.sft.config import SftStage

    cfg = SftStage.model_validate(manifest["config"])
    rows = load_rows(cfg.data, sft_row, cfg.train.seed)
    tokenizer = load_chat_tokenizer(model_dir, "auto")
    set_seed(cfg.train.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(**_common_args(manifest["config"], out), max_length=cfg.data.max_length, packing=packing,
                         completion_only_loss=True, include_num_input_tokens_seen="non_padding", **NO_RECOMPUTE)
        trainer = _quiet(SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows.train),
                                    processing_class=tokenizer))
        result = trainer.train()
    # real tokens, counted by the Trainer as our stage counts them
    return Measured(result.metrics["train_runtime"], trainer.state.num_input_tokens_seen, trainer.state.global_step)


def pairs_of(ranking: dict) -> list[tuple[str, str]]:
    """Every untied (better, worse) pair of one ranking: what a pairwise reward trainer is fed."""
    answers, ranks = ranking["answers"], ranking["ranks"]
    return [(answers[i], answers[j]) for i in range(len(answers)) for j in range(len(answers)) if ranks[i] < ranks[j]]


def trl_reward_on_pairs(manifest: dict, model_dir: Path) -> tuple[Measured, float]:
    """TRL's `RewardTrainer` on the same rankings expanded into (chosen, rejected) pairs, with as many
    sequences per step as our K-wise batch. Returns the measurement in ranked prompts (pairs / pairs per
    prompt) and the mean number of pairs per prompt."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig, RewardTrainer

    from rows.records import ranking_row
    from stages.common.chat import load_chat_tokenizer, load_rows
    from stages.reward.config import RewardStage

    cfg = RewardStage.model_validate(manifest["config"])
    rankings = load_rows(cfg.data, ranking_row, cfg.train.seed).train
    pairs = [{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": better}],
              "rejected": [{"role": "assistant", "content": worse}]}
             for r in rankings for better, worse in pairs_of(r)]
    per_prompt = len(pairs) / len(rankings)
    answers_per_prompt = sum(len(r["answers"]) for r in rankings) / len(rankings)
    tokenizer = load_chat_tokenizer(model_dir, "auto")
    set_seed(cfg.train.seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    # our step scores batch_size prompts x K answers; a pair is 2 sequences
    pair_batch = max(1, round(cfg.train.batch_size * answers_per_prompt / 2))
    config = dict(manifest["config"], train=dict(manifest["config"]["train"], batch_size=pair_batch))
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(**_common_args(config, out), max_length=cfg.data.max_length, **NO_RECOMPUTE)
        trainer = _quiet(RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                       processing_class=tokenizer))
        result = trainer.train()
    steps = trainer.state.global_step
    return Measured(result.metrics["train_runtime"], steps * pair_batch / per_prompt, steps), per_prompt


def trl_dpo(manifest: dict, model_dir: Path) -> Measured:
    """TRL's `DPOTrainer` as documented, on the pairs our dpo stage trains on (the same prompt-weighted pairs of
    the same rankings), the same model, batch and steps (pairs/s)."""
    from transformers import AutoModelForCausalLM, set_seed
    from trl import DPOConfig, DPOTrainer

    from rows.records import ranking_row
    from stages.common.chat import chat_dataset, load_chat_tokenizer, load_rows
    from stages.dpo.config import DpoStage
    from stages.dpo.pairs import prompt_weighted_pairs

    cfg = DpoStage.model_validate(manifest["config"])
    pairs = prompt_weighted_pairs(load_rows(cfg.data, ranking_row, cfg.train.seed).train, cfg.train.seed)
    tokenizer = load_chat_tokenizer(model_dir, "auto")
    set_seed(cfg.train.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(**_common_args(manifest["config"], out), max_length=cfg.data.max_length, beta=cfg.dpo.beta,
                         **NO_RECOMPUTE)
        trainer = _quiet(DPOTrainer(model=model, args=args, train_dataset=chat_dataset(pairs), processing_class=tokenizer))
        result = trainer.train()
    steps = trainer.state.global_step
    return Measured(result.metrics["train_runtime"], steps * cfg.train.batch_size, steps)


def trl_grpo(manifest: dict, policy_dir: Path, reward_dir: Path) -> Measured:
    """TRL's `GRPOTrainer` as documented: the reward model passed as a model (TRL scores it its own way), the
    same prompts, policy, answers per step, answer length and steps (answers/s)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from rows.records import prompt_row_with_reference
    from stages.common.chat import chat_dataset, load_chat_tokenizer, load_rows
    from stages.grpo.config import GrpoStage

    cfg = GrpoStage.model_validate(manifest["config"])
    rows = load_rows(cfg.data, prompt_row_with_reference, cfg.train.seed).train
    tokenizer = load_chat_tokenizer(policy_dir, "auto")
    set_seed(cfg.train.seed)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(**_common_args(manifest["config"], out), num_generations=cfg.generation.num_generations,
                          max_completion_length=cfg.generation.max_new_tokens, beta=cfg.beta, **NO_RECOMPUTE)
        trainer = _quiet(GRPOTrainer(model=model, reward_funcs=reward, args=args,
                                     train_dataset=chat_dataset([{"prompt": r["prompt"]} for r in rows]),
                                     processing_class=tokenizer, reward_processing_classes=load_chat_tokenizer(reward_dir, "auto")))
        result = trainer.train()
    steps = trainer.state.global_step
    return Measured(result.metrics["train_runtime"], steps * cfg.train.batch_size, steps)
