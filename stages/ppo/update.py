"""The PPO update of one rollout: per-token rewards with the KL penalty and GAE advantages, then epochs of
clipped policy and value updates over shuffled mini-batches (gradient accumulation over micro-batches)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from stages.common.distribution import token_logprobs_and_entropy
from stages.ppo.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
    no_reduce,
)
from stages.ppo.models import trained_outputs
from stages.ppo.ptx import PtxBatches
from stages.ppo.rollout import Trajectory


@dataclass
class Optimization:
    """What updates the trained pair: one optimizer with a policy and a critic parameter group.

    The accelerator is built with `gradient_accumulation_steps` = micro-batches per mini-batch, so
    `accelerator.accumulate` marks the last micro-batch of each mini-batch (DeepSpeed steps its engine there)."""

    accelerator: Accelerator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    max_grad_norm: float
    deepspeed: bool = False  # the engine clips and steps inside backward()


@dataclass
class Targets:
    """What the update learns towards, per answer token [B, R] (and the KL per answer [B])."""

    rewards: torch.Tensor      # score on the last token, -beta * KL on every token
    advantages: torch.Tensor   # GAE, whitened when asked
    returns: torch.Tensor      # value targets
    kl: torch.Tensor           # [B] sum over the answer of log pi_old - log pi_ref


def advantages_and_returns(trajectory: Trajectory, *, beta: float, gamma: float, lam: float, whiten: bool,
                           reduce_sum: Callable[[torch.Tensor], torch.Tensor] = no_reduce) -> Targets:
    """KL-penalised per-token rewards, GAE advantages (whitened over every process's rollout if `whiten`;
    `reduce_sum` sums over processes) and value targets."""
    mask = trajectory.response_mask
    rewards, token_kl = kl_penalised_rewards(trajectory.scores, trajectory.logprobs, trajectory.ref_logprobs, mask=mask,
                                             beta=beta)
    advantages, returns = gae(rewards, trajectory.values, mask, gamma=gamma, lam=lam)
    if whiten:
        advantages = masked_whiten(advantages, mask, reduce_sum=reduce_sum)
    return Targets(rewards=rewards, advantages=advantages, returns=returns, kl=token_kl.sum(1))


def ppo_epochs(trained: torch.nn.Module, optimization: Optimization, trajectory: Trajectory, *, targets: Targets,
               epochs: int, mini_batch_size: int, micro_batch_size: int, clip_range: float, value_clip_range: float,
               value_coef: float, temperature: float, top_p: float = 1.0, ptx_batches: PtxBatches | None = None,
               ptx_coef: float = 0.0) -> dict[str, float]:
    """`epochs` passes over this process's rollout in mini-batches of `mini_batch_size` answers, each split
    into micro-batches of `micro_batch_size` (both per process; ppo_batches() makes them divide). Returns the
    mean of each logged quantity.

    Each optimizer step minimises the token mean of the policy and value losses over the whole mini-batch
    (every process's share of it) and the mean PPO-ptx loss over the step's blocks: a micro-batch's loss is its
    token sum over the mini-batch's token count, times what accelerate divides by (the accumulation steps)
    and averages over (the processes)."""
    accelerator = optimization.accelerator
    prompt_length = trajectory.queries.shape[1]
    accumulation = mini_batch_size // micro_batch_size
    stats: dict[str, list[float]] = {}

    def log(name: str, value: torch.Tensor | float) -> None:
        stats.setdefault(name, []).append(float(value))

    for _ in range(epochs):
        order = torch.randperm(len(trajectory), device=trajectory.queries.device)
        for start in range(0, len(trajectory), mini_batch_size):
            mini = order[start : start + mini_batch_size]
            tokens = accelerator.reduce(trajectory.response_mask[mini].sum().float(), "sum")
            normalizer = tokens.clamp(min=1) / (accumulation * accelerator.num_processes)
            ptx_parts = ptx_batches.next_step(accumulation) if ptx_batches is not None else [None] * accumulation
            ptx_blocks = sum(len(p) for p in ptx_parts if p is not None)
            for part, ptx_ids in zip(mini.split(micro_batch_size), ptx_parts):
                with accelerator.accumulate(trained):
                    sample = trajectory.select(part)
                    mask = sample.response_mask
                    ids, attention = sample.sequences()
                    logits, values, ptx_loss = trained_outputs(trained, ids, attention, prompt_length=prompt_length,
                                                               ptx_input_ids=ptx_ids)
                    logprobs, entropy = token_logprobs_and_entropy(logits, sample.responses, temperature=temperature,
                                                                   top_p=top_p)
                    policy = clipped_policy_loss(logprobs, sample.logprobs, targets.advantages[part], mask=mask,
                                                 clip_range=clip_range, normalizer=normalizer)
                    value_loss, value_clip = clipped_value_loss(values, sample.values, targets.returns[part], mask=mask,
                                                                clip_range=value_clip_range, normalizer=normalizer)
                    loss = policy.loss + value_coef * value_loss
                    if ptx_loss is not None:
                        # the mean over the step's blocks: this micro-batch's share of them
                        loss = loss + ptx_coef * ptx_loss * (len(ptx_ids) / ptx_blocks) * accumulation
                        log("ptx/loss", ptx_loss.detach())
                    accelerator.backward(loss)

                    own_tokens = mask.sum().clamp(min=1)  # logged: this micro-batch's own token means
                    log("policy/loss", policy.loss.detach() * normalizer / own_tokens)
                    log("policy/clip_fraction", policy.clip_fraction)
                    log("policy/approx_kl", policy.approx_kl)
                    log("value/loss", value_loss.detach() * normalizer / own_tokens)
                    log("value/clip_fraction", value_clip)
                    log("policy/entropy", masked_mean(entropy, mask))
            for name, value in optimizer_step(trained, optimization).items():
                log(name, value)
    return {name: sum(values) / len(values) for name, values in stats.items()}


def optimizer_step(trained: torch.nn.Module, optimization: Optimization) -> dict[str, float]:
    """Clip and step after a mini-batch's micro-batches; the scheduler steps once per update. Returns what to log.

    One gradient norm over policy and critic, clipped together: what a DeepSpeed engine does, so a run gives
    the same weights whatever its launch settings. A non-finite gradient (an overflowing ratio, a NaN loss)
    would poison the weights: its step is skipped and counted. Under fp16 loss scaling (accelerate's
    GradScaler) the scaler does that itself, and must see every step to lower its scale."""
    accelerator = optimization.accelerator
    norm = accelerator.clip_grad_norm_(trained.parameters(), optimization.max_grad_norm)
    logged = {}
    if optimization.deepspeed:  # the engine stepped at the last micro-batch (and skips overflowing fp16 steps)
        if norm is not None:
            logged["train/grad_norm"] = float(norm)
        optimization.scheduler.step()
        return logged
    finite = bool(torch.isfinite(torch.as_tensor(norm)))
    if accelerator.scaler is not None:
        optimization.optimizer.step()
        skipped = accelerator.optimizer_step_was_skipped
    else:
        skipped = not finite
        if finite:
            optimization.optimizer.step()
    logged["train/skipped_step_fraction"] = 1.0 if skipped else 0.0
    if finite:
        logged["train/grad_norm"] = float(norm)
    optimization.scheduler.step()
    optimization.optimizer.zero_grad(set_to_none=True)
    return logged


def rollout_stats(accelerator: Accelerator, trajectory: Trajectory, targets: Targets, *, eos_token_id: int) -> dict[str, float]:
    """What the rollout looked like, over all processes: scores, KL, rewards, lengths, stop rate, entropy."""
    scores = accelerator.gather(trajectory.raw_scores)
    return {
        "score/mean": scores.mean().item(),
        "score/std": scores.std().item() if len(scores) > 1 else 0.0,
        "kl/mean": accelerator.gather(targets.kl).mean().item(),
        "reward/mean_total": accelerator.gather(targets.rewards.sum(1)).mean().item(),
        "response/length": accelerator.gather(trajectory.response_mask.sum(1).float()).mean().item(),
        "response/stopped": accelerator.gather((trajectory.responses == eos_token_id).any(1).float()).mean().item(),
        "rollout/entropy": masked_mean(trajectory.entropy, trajectory.response_mask).item(),
    }
