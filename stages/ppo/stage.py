"""PPO: the SFT policy is optimised against the frozen reward model, with a KL penalty to its own start.

    accelerate launch -m stages.ppo --config configs/pipelines/tiny.yaml --stage ppo

Inputs: `policy` (an SFT artifact: the policy and the frozen reference) and `reward` (a reward artifact:
the frozen reward model and the critic's initial weights). Each iteration: take the next prompts (a seeded
order that is a function of the iteration, so resuming needs no loader state), sample answers, score them
with the four roles, compute KL-penalised rewards and GAE advantages, run `ppo.epochs` passes of clipped
policy and value updates, adapt beta. Every `save_every` iterations accelerate saves the full state
(both models, optimisers, schedulers, RNG, the KL coefficient, the ptx position). At the end, the SFT
and PPO policies answer the same held-out prompts (see evaluate.py) and the policy is saved as an HF
causal LM, with the critic in `artifact/critic/`.
"""

from __future__ import annotations

import math
import random
import time

import torch

from core.checkpoints import commit_checkpoint
from core.errors import InputError
from core.history import append_record, attempt_marker, read_history
from stages.ppo.config import PpoStage
from stages.common.chat import check_context_length, interleaved, load_chat_tokenizer, load_rows
from stages.common.entry import StageContext
from stages.common.lora import lora_config
from core.records import prompt_row
from stages.ppo.evaluate import compare_policies, sample_prompts_for_table, sample_table
from stages.ppo.losses import KLController
from stages.ppo.models import PolicyAndValue, Roles, load_roles
from stages.ppo.placement import (
    configure_engine,
    frozen_context,
    is_deepspeed,
    needs_synced_generation,
    no_zero3_init,
    place_frozen,
    policy_for_generation,
    reference_for_generation,
    write_artifact,
    zero_stage,
)
from stages.ppo.rollout import HFGenerator, collect, encode_prompts
from stages.ppo.trainer import Optimisation, iteration


class PromptOrder:
    """Prompts for iteration i: a seeded shuffle per pass over the data, sliced for this process."""

    def __init__(self, rows: list[dict], batch_size: int, seed: int, rank: int, world_size: int):
        if batch_size % world_size:
            raise InputError(f"ppo.rollout_batch_size ({batch_size}) must be a multiple of the process count ({world_size})")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._order: tuple[int, list[int]] = (-1, [])

    def _index(self, k: int) -> int:
        epoch, offset = divmod(k, len(self.rows))
        if self._order[0] != epoch:
            order = list(range(len(self.rows)))
            random.Random(self.seed + epoch).shuffle(order)
            self._order = (epoch, order)
        return self._order[1][offset]

    def prompts(self, i: int) -> list[list[dict]]:
        """This process's share of iteration i's prompts."""
        share = self.batch_size // self.world_size
        first = i * self.batch_size + self.rank * share
        return [self.rows[self._index(k)]["prompt"] for k in range(first, first + share)]


def check_same_tokenizer(tokenizer, reward_dir) -> None:
    """The reward model reads the policy's token ids directly, so both must share one vocabulary."""
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(reward_dir).get_vocab() != tokenizer.get_vocab():
        raise InputError(f"inputs.reward ({reward_dir}): its tokenizer differs from the policy's; train the reward "
                         "model from the same base (e.g. from the SFT stage)")


def save_checkpoint(ctx: StageContext, accelerator, step: int, keep_last: int) -> None:
    """accelerate's full state into a fresh directory, then committed as `step-NNNNNN` by the main process."""
    written = ctx.dirs.checkpoints / f"incoming-{step:06d}"
    accelerator.save_state(str(written))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        commit_checkpoint(ctx.dirs, written, step, ctx.fingerprint, ctx.spec["stage"], keep_last)
    accelerator.wait_for_everyone()


def train(ctx: StageContext) -> dict:
    """Run PPO, evaluate SFT vs PPO, save the policy and the critic; return the manifest metrics."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from stages.common.hf_trainer import quiet_libraries

    cfg: PpoStage = ctx.config
    name, ppo, gen = ctx.spec["stage"], cfg.ppo, cfg.generation
    quiet_libraries()
    micro = ppo.micro_batch_size or ppo.mini_batch_size
    world = PartialState().num_processes
    mini = ppo.mini_batch_size // world
    micro = min(micro, max(1, mini))
    if ppo.mini_batch_size % world or mini % micro:
        raise InputError(f"stage {name}: ppo.mini_batch_size ({ppo.mini_batch_size}) must split into {world} "
                         f"processes x whole micro-batches of ppo.micro_batch_size ({micro})")
    # trackers: tensorboard under logs/tensorboard, plus train.report_to (wandb, mlflow, ...); one optimiser
    # step per mini-batch of `mini // micro` accumulated micro-batches; the scheduler steps once per update
    accelerator = Accelerator(mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.train.precision],
                              gradient_accumulation_steps=mini // micro, step_scheduler_with_optimizer=False,
                              log_with=["tensorboard", *cfg.train.report_to], project_dir=str(ctx.dirs.logs))
    set_seed(cfg.train.seed)
    deepspeed = is_deepspeed(accelerator)
    if deepspeed:
        configure_engine(accelerator, micro, mini // micro, cfg.train.max_grad_norm, name)

    # data: prompts (held-out ones with a human ranking also give the gold win rate)
    rows = load_rows(cfg.data, prompt_row, cfg.train.seed)
    order = PromptOrder(rows.train, ppo.rollout_batch_size, cfg.train.seed, accelerator.process_index,
                        accelerator.num_processes)

    # the four roles: policy and value trained (one module, one optimiser), reference and reward frozen
    check_context_length(ctx.inputs["policy"], cfg.data.max_length + gen.max_new_tokens,
                         "data.max_length + generation.max_new_tokens")
    tokenizer = load_chat_tokenizer(ctx.inputs["policy"], "auto")
    check_same_tokenizer(tokenizer, ctx.inputs["reward"])
    lora = lora_config(cfg.lora)
    loaded = load_roles(ctx.inputs["policy"], ctx.inputs["reward"], lora, frozen_context(accelerator, ppo.frozen_models))
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in loaded.policy.parameters())  # ZeRO-3 partitions too
    updates = cfg.train.max_steps * ppo.epochs * (ppo.rollout_batch_size // ppo.mini_batch_size)
    groups = [{"params": [p for p in loaded.policy.parameters() if p.requires_grad]},  # the adapter only, with LoRA
              {"params": list(loaded.value.parameters()), "lr": ppo.critic_learning_rate or cfg.train.learning_rate}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.train.learning_rate, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
                                  weight_decay=cfg.train.weight_decay)
    scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                              num_training_steps=updates)
    trained, optimizer, scheduler = accelerator.prepare(PolicyAndValue(loaded.policy, loaded.value), optimizer,
                                                        scheduler)
    reference = loaded.reference if lora is not None else place_frozen(loaded.reference, accelerator, ppo.frozen_models)
    roles = Roles(trained, reference, place_frozen(loaded.reward, accelerator, ppo.frozen_models))
    opt = Optimisation(accelerator, optimizer, scheduler, cfg.train.max_grad_norm, deepspeed)
    kl = KLController(ppo.kl.beta, ppo.kl.target, ppo.kl.horizon)
    accelerator.register_for_checkpointing(kl)
    ptx = None
    if ppo.ptx is not None:
        from stages.ppo.ptx import PtxBatches

        ptx = PtxBatches(ppo.ptx.data, tokenizer, ppo.ptx.block_size, ppo.ptx.batch_size, cfg.train.seed,
                         accelerator.device)
        accelerator.register_for_checkpointing(ptx)
    if accelerator.is_main_process:
        placement = f"; ZeRO-{zero_stage(accelerator)}, frozen models {ppo.frozen_models}" if deepspeed else ""
        print(f"[{name}] policy {n_params / 1e6:.2f} M parameters; {len(rows.train)} train / {len(rows.validation)} "
              f"held-out prompts; {cfg.train.max_steps} iterations of {ppo.rollout_batch_size} answers{placement}",
              flush=True)

    # resume: accelerate restores weights, optimisers, schedulers, RNG, beta and the ptx position
    first = 0
    if ctx.resume_from is not None:
        accelerator.load_state(str(ctx.resume_from.path))
        first = ctx.resume_from.step

    def make_generator(role: str, sample: bool = True) -> HFGenerator:
        """A generator for the trained policy ("policy") or the frozen SFT policy ("reference")."""
        if role == "policy":
            return HFGenerator(lambda: policy_for_generation(trained, accelerator), tokenizer, gen.max_new_tokens,
                               gen.temperature, gen.top_p, sample)
        return HFGenerator(lambda: reference_for_generation(roles.reference, trained, accelerator), tokenizer,
                           gen.max_new_tokens, gen.temperature, gen.top_p, sample,
                           synced_gpus=needs_synced_generation(roles.reference, accelerator))

    generator = make_generator("policy")
    accelerator.init_trackers("tensorboard", config={"stage": name, "fingerprint": ctx.fingerprint})
    metrics_file = ctx.dirs.logs / "metrics.jsonl"
    history = [r for r in read_history(metrics_file) if 0 < r["step"] <= first]  # a resumed run's earlier iterations
    if accelerator.is_main_process:
        append_record(metrics_file, attempt_marker(first))
    ctx.progress.start(cfg.train.max_steps, first)
    started = time.monotonic()
    for i in range(first, cfg.train.max_steps):
        # rollout: sample answers to this iteration's prompts and score them with all four roles
        t0 = time.perf_counter()
        queries, query_mask = encode_prompts(tokenizer, order.prompts(i), cfg.data.max_length, accelerator.device)
        timings: dict[str, float] = {}
        rollout = collect(roles, generator, queries, query_mask, tokenizer.eos_token_id, gen.temperature, micro,
                          gen.missing_eos_penalty, ppo.score_clip, timings, ppo.whiten_scores)
        # learn: KL-penalised rewards, GAE, PPO epochs, beta update
        stats = iteration(roles, opt, rollout, kl, ppo, gen.temperature, micro, ptx)
        stats.update({"time/generate": timings["generate"], "time/score": timings["score"],
                      "time/iteration": time.perf_counter() - t0,
                      "response/stopped": (rollout.responses == tokenizer.eos_token_id).any(1).float().mean().item()})
        history.append(stats)
        step = i + 1
        accelerator.log(stats, step=step)
        ctx.progress.update(step, {"score": stats["score/mean"], "kl": stats["kl/mean"]})
        if accelerator.is_main_process:
            append_record(metrics_file, {"step": step, "time": round(time.time(), 3), **stats})
            log_line(name, step, cfg.train.max_steps, stats, started, first, cfg.train.log_every)
        if step % cfg.train.save_every == 0 and step < cfg.train.max_steps:
            save_checkpoint(ctx, accelerator, step, cfg.train.keep_last)

    ctx.progress.close()
    for tracker in accelerator.trackers:  # not end_training(): it would also tear down the process group
        tracker.finish()

    # evaluate: SFT (the frozen reference) and PPO answer the same held-out prompts, seeded alike
    accelerator.wait_for_everyone()
    held_out = interleaved(rows.validation_by_source)[: cfg.evaluation.prompts]
    evaluation = compare_policies(roles, make_generator, tokenizer, held_out,
                                  cfg.data.max_length, gen.temperature, micro, cfg.evaluation.seed, accelerator.device)
    # the sample table: greedy base -> SFT -> PPO answers on the prompts the SFT stage sampled, all scored
    prompts, base_answers = sample_prompts_for_table(ctx.input_manifest("policy"), held_out, cfg.evaluation.samples)
    evaluation["samples"] = sample_table(roles, make_generator, tokenizer, prompts, base_answers, cfg.data.max_length,
                                         gen.temperature, micro, accelerator.device)

    # artifact: the policy as an HF causal LM with the tokenizer; the critic beside it. The full weights are
    # gathered on every process (ZeRO-3 shards), then written into freshly loaded models by the main one.
    state = accelerator.get_state_dict(trained)
    if accelerator.is_main_process:
        with no_zero3_init(accelerator):
            write_artifact(state, ctx.inputs["policy"], ctx.inputs["reward"], lora, tokenizer, ctx.staged_artifact)
    accelerator.wait_for_everyone()
    return {**evaluation, **summary(history, cfg)}


def log_line(name: str, step: int, total: int, stats: dict, started: float, first: int, every: int) -> None:
    """One terminal line every `every` iterations (and for the first and the last of this attempt)."""
    if step % every and step != total and step != first + 1:
        return
    elapsed = time.monotonic() - started
    eta = elapsed / (step - first) * (total - step)
    print(f"[{name}] iteration {step}/{total}  score {stats['score/mean']:.3g}  kl {stats['kl/mean']:.3g}  "
          f"beta {stats['kl/beta']:.3g}  entropy {stats['policy/entropy']:.3g}  length {stats['response/length']:.3g}  "
          f"| generate {stats['time/generate']:.1f}s score {stats['time/score']:.1f}s train {stats['time/train']:.1f}s "
          f"| {elapsed:.0f}s, eta {eta:.0f}s", flush=True)


def summary(history: list[dict], cfg: PpoStage) -> dict:
    """Training metrics for the manifest: first and last scores and KL, and where the time went."""
    if not history:
        return {"train/iterations": cfg.train.max_steps}
    mean = lambda key: sum(h[key] for h in history) / len(history)  # noqa: E731
    total = mean("time/iteration")
    return {
        "train/iterations": cfg.train.max_steps,
        "train/rollout_batch": cfg.ppo.rollout_batch_size,
        "train/mini_batch": cfg.ppo.mini_batch_size,
        "train/first_score": history[0]["score/mean"],
        "train/last_score": history[-1]["score/mean"],
        "train/last_kl": history[-1]["kl/mean"],
        "train/beta": history[-1]["kl/beta"],
        "time/iteration_s": total,
        "time/generate_share": mean("time/generate") / total if total else math.nan,
        "time/score_share": mean("time/score") / total if total else math.nan,
        "time/train_share": mean("time/train") / total if total else math.nan,
    }
