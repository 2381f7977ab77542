"""One PPO iteration, top to bottom: rollout → score → advantages → update. The stage's loop calls
`ppo_iteration` once per iteration; the loop tests call its `update_on_rollout` on rollouts they build, so both
exercise the same code.

    rollout     the policy answers this iteration's prompts (a vLLM engine first gets its current weights)
    score       all four roles read the answers: old and reference log-probs, values, reward-model scores
    advantages  per-token rewards (score at the end, -beta * KL on every token), GAE, value targets
    update      `epochs` passes of clipped policy and value updates over shuffled mini-batches; beta adapts
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from stages.common.generation import encode_prompts
from stages.ppo.config import PpoBatches, PpoStage
from stages.ppo.losses import KLController
from stages.ppo.models import PpoModels
from stages.ppo.placement import Generators
from stages.ppo.ptx import PtxBatches
from stages.ppo.rollout import Trajectory, no_reduce, score_rollout
from stages.ppo.update import Optimization, advantages_and_returns, ppo_epochs, rollout_stats


@dataclass(frozen=True)
class IterationSettings:
    """What one iteration reads: sampling, lengths, batch sizes (per process) and PPO's coefficients."""

    max_prompt_length: int
    max_chat_length: int
    temperature: float
    top_p: float
    rollout_batch_size: int       # prompts per iteration over all processes (how far beta may move)
    mini_batch_size: int          # answers per optimizer step, per process
    micro_batch_size: int         # answers per forward, per process
    epochs: int
    clip_range: float
    value_clip_range: float
    value_coef: float
    gamma: float
    lam: float
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = None
    score_clip: float | None = None
    whiten_scores: bool = False
    ptx_coef: float = 0.0

    @classmethod
    def of(cls, cfg: PpoStage, batches: PpoBatches) -> IterationSettings:
        """The settings of a ppo stage, with its batches split over this launch's processes."""
        ppo, gen = cfg.ppo, cfg.generation
        return cls(max_prompt_length=cfg.data.max_length, max_chat_length=cfg.data.max_length + gen.max_new_tokens,
                   temperature=gen.temperature, top_p=gen.top_p, rollout_batch_size=ppo.rollout_batch_size,
                   mini_batch_size=batches.mini, micro_batch_size=batches.micro, epochs=ppo.epochs,
                   clip_range=ppo.clip_range, value_clip_range=ppo.value_clip_range, value_coef=ppo.value_coef,
                   gamma=ppo.gamma, lam=ppo.lam, whiten_advantages=ppo.whiten_advantages,
                   missing_eos_penalty=gen.missing_eos_penalty, score_clip=ppo.score_clip,
                   whiten_scores=ppo.whiten_scores, ptx_coef=ppo.ptx.coef if ppo.ptx else 0.0)


class PhaseTimer:
    """Wall time per phase of one iteration: `with timer("generate"): ...`, then `as_metrics()`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def as_metrics(self) -> dict[str, float]:
        """`time/<phase>` for each phase and `time/iteration` for the whole, in seconds."""
        return {**{f"time/{phase}": s for phase, s in self.seconds.items()},
                "time/iteration": time.perf_counter() - self.started}


def ppo_iteration(models: PpoModels, optimization: Optimization, *, step: int, prompts: list[list[dict]],
                  generators: Generators, tokenizer, kl: KLController, settings: IterationSettings,
                  ptx: PtxBatches | None = None,
                  reduce_sum: Callable[[torch.Tensor], torch.Tensor] = no_reduce) -> dict[str, float]:
    """Iteration `step` (0-based) on this process's `prompts`: the rollout, its scoring and the update; returns
    what to log, with the seconds of each phase."""
    timer = PhaseTimer()
    # rollout: the policy answers (a vLLM engine first gets the weights of the `step` updates so far)
    with timer("sync"):
        generators.refresh(step=step)
    with timer("generate"):
        queries, query_mask = encode_prompts(tokenizer, prompts, max_length=settings.max_prompt_length,
                                             device=optimization.accelerator.device)
        responses = generators.of("policy").generate(queries, query_mask)
    # score: log-probs of the policy and the reference, values, reward-model scores
    with timer("score"), models.frozen_in_use():
        trajectory = score_rollout(models, queries, query_mask, tokenizer=tokenizer, prompts=prompts,
                                   responses=responses, temperature=settings.temperature, top_p=settings.top_p,
                                   micro_batch_size=settings.micro_batch_size, max_length=settings.max_chat_length,
                                   missing_eos_penalty=settings.missing_eos_penalty, score_clip=settings.score_clip,
                                   whiten_scores=settings.whiten_scores, reduce_sum=reduce_sum)
    with timer("train"):
        stats = update_on_rollout(models, optimization, trajectory, kl=kl, settings=settings,
                                  eos_token_id=tokenizer.eos_token_id, ptx=ptx, reduce_sum=reduce_sum)
    return {**stats, **timer.as_metrics()}


def update_on_rollout(models: PpoModels, optimization: Optimization, trajectory: Trajectory, *, kl: KLController,
                      settings: IterationSettings, eos_token_id: int, ptx: PtxBatches | None = None,
                      reduce_sum: Callable[[torch.Tensor], torch.Tensor] = no_reduce) -> dict[str, float]:
    """Advantages and the PPO update of one scored rollout, its statistics, and beta moved by the rollout's KL."""
    # advantages: KL-penalised rewards, GAE, value targets
    targets = advantages_and_returns(trajectory, beta=kl.value, gamma=settings.gamma, lam=settings.lam,
                                     whiten=settings.whiten_advantages, reduce_sum=reduce_sum)
    # update: epochs of clipped policy and value updates over mini-batches
    stats = ppo_epochs(models.trained, optimization, trajectory, targets=targets, epochs=settings.epochs,
                       mini_batch_size=settings.mini_batch_size, micro_batch_size=settings.micro_batch_size,
                       clip_range=settings.clip_range, value_clip_range=settings.value_clip_range,
                       value_coef=settings.value_coef, temperature=settings.temperature, top_p=settings.top_p,
                       ptx_batches=ptx, ptx_coef=settings.ptx_coef)
    stats.update(rollout_stats(optimization.accelerator, trajectory, targets, eos_token_id=eos_token_id),
                 **{"kl/beta": kl.value, "learning_rate": optimization.scheduler.get_last_lr()[0]})
    kl.update(stats["kl/mean"], settings.rollout_batch_size)
    return stats
