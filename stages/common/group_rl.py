"""The critic-free RL kinds (grpo, rloo) on TRL's GRPOTrainer and RLOOTrainer: prompts, reward functions that
score as the reward stage and PPO score, the trainer wired to our checkpoints, held-out metrics, the artifact.

The reward stage's model is a TRL reward *function* here, not a model TRL loads: it scores each answer through
stages.common.scoring (the rendered chat, the classifier's own pooling), so grpo, rloo, PPO and the reward
stage read one score. It is a whole frozen copy on every process (as PPO's `frozen_models: replicate`).
"""

from __future__ import annotations

import itertools

from accelerate import PartialState
from transformers import AutoModelForSequenceClassification, set_seed

from rows.records import prompt_row_with_reference
from sections.group_rl import GroupRLStage, eval_micro_batch
from stages.common.chat import chat_dataset, load_chat_tokenizer, load_rows
from stages.common.entry import StageContext
from stages.common.hf_models import (
    Loading,
    hub_commit_of,
    load_causal_lm,
    loaded_as,
    locate,
    model_ref,
    parameter_count,
    resolve_hub,
)
from stages.common.hf_trainer import (
    attach,
    evaluate_before_training,
    final_evaluation,
    gradient_accumulation,
    quiet_libraries,
    training_arguments,
    training_metrics,
)
from stages.common.labelers import rule_function
from stages.common.lora import lora_config, save_trained_artifact
from stages.common.scoring import score_chats


class RewardModelScore:
    """A TRL reward function: the reward stage's model scores each (prompt, answer) chat."""

    __name__ = "reward_model"

    def __init__(self, model_dir, *, loading: Loading, max_length: int, batch_size: int):
        self.device = PartialState().device
        self.tokenizer = load_chat_tokenizer(model_dir, "auto", loading)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, **loading.model_kwargs())
        self.model.to(self.device).eval().requires_grad_(False)
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, prompts, completions, **_) -> list[float]:
        answers = [answer_text(c) for c in completions]
        return score_chats(self.model, self.tokenizer, prompts, answers=answers, max_length=self.max_length,
                           batch_size=self.batch_size, device=self.device).tolist()


class RuleScore:
    """A TRL reward function from a rule `module:function(prompt, answers, reference) -> scores`, called once per
    group of answers to one prompt. TRL passes a group's answers one after another; a run of the same prompt
    longer than `group_size` (the prompt drawn twice in a row) is that many groups, never one merged group."""

    def __init__(self, function: str, *, group_size: int, name: str = "rule"):
        self.function, self.group_size, self.__name__ = function, group_size, name
        self.rule = rule_function(function)

    def __call__(self, prompts, completions, *, reference=None, instructions=None, **_) -> list[float]:
        references = reference if reference is not None else [None] * len(prompts)
        checks = instructions if instructions is not None else [None] * len(prompts)
        scores: list[float] = []
        rows = list(zip(prompts, completions, references, checks))
        for group in self._groups(rows):
            prompt, ref, check = group[0][0], group[0][2] or None, group[0][3]
            found = list(self.rule(prompt, [answer_text(c) for _, c, _, _ in group], ref,
                                   instructions=check or None))
            if len(found) != len(group):
                raise ValueError(f"{self.function} returned {len(found)} scores for {len(group)} answers")
            scores += [float(s) for s in found]
        return scores

    def _groups(self, rows: list[tuple]) -> list[list[tuple]]:
        groups = []
        for _, run in itertools.groupby(rows, key=lambda row: repr(row[0])):
            run = list(run)
            groups += [run[start : start + self.group_size] for start in range(0, len(run), self.group_size)]
        return groups


class MissingEosPenalty:
    """A TRL reward function: minus `penalty` for an answer that never reached EOS (cut at max_new_tokens), as
    PPO's `generation.missing_eos_penalty`; TRL's completion ids end at the first EOS."""

    __name__ = "missing_eos"

    def __init__(self, eos_token_id: int, penalty: float):
        self.eos_token_id, self.penalty = eos_token_id, penalty

    def __call__(self, prompts, completions, completion_ids, **_) -> list[float]:
        return [0.0 if self.eos_token_id in ids else -self.penalty for ids in completion_ids]


def answer_text(completion) -> str:
    """A completion as text, stripped as the reward stage and PPO read answers (TRL gives conversational ones
    as `[{"role": "assistant", "content": ...}]`)."""
    return (completion[-1]["content"] if isinstance(completion, list) else completion).strip()


def reward_functions(ctx: StageContext, eos_token_id: int) -> list:
    """The stage's reward functions, in the order of `reward_weights`: the reward model, then the rule; then
    the missing-EOS penalty (weight 1)."""
    cfg: GroupRLStage = ctx.config
    functions = []
    reward_dir = ctx.inputs.get("reward") or cfg.reward_model
    if reward_dir is not None:
        functions.append(RewardModelScore(reward_dir, loading=Loading.of(cfg.model),
                                          max_length=cfg.reward_max_length, batch_size=cfg.train.batch_size))
    if cfg.reward_rule is not None:
        functions.append(RuleScore(cfg.reward_rule.function, group_size=cfg.generation.num_generations))
    if cfg.generation.missing_eos_penalty is not None:
        functions.append(MissingEosPenalty(eos_token_id, cfg.generation.missing_eos_penalty))
    if cfg.evaluation_judge is not None:
        functions.append(RuleScore(cfg.evaluation_judge.function, group_size=cfg.generation.num_generations,
                                   name="judge"))
    return functions


def reward_weights(cfg: GroupRLStage) -> list[float] | None:
    """TRL's reward_weights: the config's (for the reward model and rule; default 1 each), 1 for the missing-EOS
    penalty, and 0 for the evaluation judge (TRL logs it as `rewards/judge/mean`; it moves no advantage)."""
    if cfg.reward_weights is None and cfg.evaluation_judge is None:
        return None
    trained = cfg.reward_weights or [1.0] * (int("reward" in cfg.inputs or cfg.reward_model is not None)
                                             + int(cfg.reward_rule is not None))
    return [*trained, *([1.0] if cfg.generation.missing_eos_penalty is not None else []),
            *([0.0] if cfg.evaluation_judge is not None else [])]


def prompt_rows(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """({prompt, reference}) rows for TRL, and how many were left out as longer than `max_length` tokens."""
    kept = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)
        if len(ids["input_ids"]) <= max_length:
            # chat_dataset stores it with the Json feature: each instruction keeps its own kwargs
            kept.append({"prompt": row["prompt"], "reference": row["reference"] or "",
                         "instructions": row.get("instructions")})
    return kept, len(rows) - len(kept)


def reference_arguments(cfg: GroupRLStage, source, loading: Loading) -> dict:
    """`model_init_kwargs` for TRL's reference model: without LoRA and with beta > 0, TRL loads the reference
    itself from the policy's `config._name_or_path`, and only these arguments carry the rest of the source: a
    Hub model's pinned commit, a GGUF file's name, remote code (TRL takes dtype and attention from the policy).
    {} when TRL loads no reference."""
    if cfg.beta == 0 or cfg.lora is not None:
        return {}
    return {"model_init_kwargs": {**locate(source)[1], **loading.code_kwargs()}}


def group_arguments(ctx: StageContext, config_class: type, **algorithm):
    """TRL's GRPOConfig / RLOOConfig for the stage (before the model loads: ZeRO-3 registers its config)."""
    cfg: GroupRLStage = ctx.config
    generation = cfg.generation
    micro, _ = gradient_accumulation(cfg.train, PartialState().num_processes)
    return training_arguments(
        ctx, cfg.train, config_class=config_class,
        num_generations=generation.num_generations,
        num_generations_eval=generation.num_generations,
        per_device_eval_batch_size=eval_micro_batch(micro, world=PartialState().num_processes,
                                                    num_generations=generation.num_generations),
        max_completion_length=generation.max_new_tokens,
        temperature=generation.temperature,
        top_p=generation.top_p,
        mask_truncated_completions=generation.mask_truncated_completions,
        use_vllm=generation.use_vllm,
        vllm_mode=generation.vllm_mode,
        beta=cfg.beta,
        reward_weights=reward_weights(cfg),
        # TRL's own completions table, to wandb and trackio (it has none for tensorboard or mlflow)
        log_completions=cfg.tracking.backend in ("wandb", "trackio") and cfg.tracking.table_rows > 0,
        num_completions_to_print=cfg.tracking.table_rows,
        remove_unused_columns=False,  # the `reference` column reaches the rule
        **algorithm,
    )


def train_group_rl(ctx: StageContext, trainer_class: type, make_arguments) -> dict:
    """Train the policy with `trainer_class` (GRPOTrainer or RLOOTrainer), evaluate before and after on
    held-out prompts, save; the manifest metrics. The reward functions come before `make_arguments()`: under
    ZeRO-3 the arguments make transformers load models as partitions, and the frozen reward model is a whole
    copy on each process. `make_arguments(**extra)` passes `extra` to the TRL config."""
    cfg: GroupRLStage = ctx.config
    name = ctx.spec["stage"]
    quiet_libraries()
    set_seed(cfg.train.seed)

    rows = load_rows(cfg.data, prompt_row_with_reference, cfg.train.seed)
    source = ctx.inputs.get("model") or resolve_hub(model_ref(cfg.model.source()))
    loading = Loading.of(cfg.model)
    tokenizer = load_chat_tokenizer(source, cfg.chat_template, loading)
    train_rows, long_train = prompt_rows(rows.train[: cfg.data.max_prompts], tokenizer, cfg.data.max_length)
    eval_rows, long_eval = prompt_rows(rows.validation[: cfg.evaluation_prompts], tokenizer, cfg.data.max_length)
    rewards = reward_functions(ctx, tokenizer.eos_token_id)
    args = make_arguments(**reference_arguments(cfg, source, loading))
    model = load_causal_lm(source, loading)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    n_params = parameter_count(model)
    print(f"[{name}] {n_params / 1e6:.2f} M parameters from {source}{loaded_as(model)}; {len(train_rows)} train / "
          f"{len(eval_rows)} held-out prompts ({long_train + long_eval} longer than data.max_length left out), "
          f"{cfg.generation.num_generations} answers each; rewards: {', '.join(f.__name__ for f in rewards)}",
          flush=True)

    trainer = trainer_class(model=model, reward_funcs=rewards, args=args, train_dataset=chat_dataset(train_rows),
                            eval_dataset=chat_dataset(eval_rows), processing_class=tokenizer,
                            peft_config=lora_config(cfg.lora))
    attach(trainer, ctx, cfg.train)
    base = evaluate_before_training(trainer)  # the input policy on the held-out prompts
    result = trainer.train(resume_from_checkpoint=str(ctx.resume_from.path) if ctx.resume_from else None)
    evaluation = final_evaluation(trainer)
    save_trained_artifact(trainer, tokenizer, ctx.staged_artifact)

    reward_names = [f.__name__ for f in rewards]
    return hub_commit_of(source) | {
        "eval/reward": evaluation.get("eval_reward"),
        "eval/base_reward": base.get("eval_reward"),
        "eval/reward_std": evaluation.get("eval_reward_std"),
        **{f"eval/{n}_reward": evaluation.get(f"eval_rewards/{n}/mean") for n in reward_names},
        **({"eval/base_judge_reward": base.get("eval_rewards/judge/mean")} if cfg.evaluation_judge else {}),
        "eval/kl": evaluation.get("eval_kl"),
        "eval/length": evaluation.get("eval_completions/mean_length"),
        "eval/base_length": base.get("eval_completions/mean_length"),
        "eval/stop_rate": _stop_rate(evaluation),
        "eval/base_stop_rate": _stop_rate(base),
        **training_metrics(trainer, result, cfg.train, parameters=n_params),
        "train/answers": trainer.state.global_step * cfg.train.batch_size,
        "data/train_prompts": len(train_rows),
        "data/validation_prompts": len(eval_rows),
        "data/long_prompts_left_out": long_train + long_eval,
    }


def _stop_rate(metrics: dict) -> float | None:
    clipped = metrics.get("eval_completions/clipped_ratio")
    return None if clipped is None else 1.0 - clipped
