"""PPO: the SFT policy is optimized against the frozen reward model, with a KL penalty to its own start.

    accelerate launch -m stages.ppo --config configs/pipelines/tiny.yaml --stage ppo

Inputs: `policy` (an SFT artifact: the policy and the frozen reference) and `reward` (a reward artifact:
the frozen reward model and the critic's initial weights). Each iteration (`ppo_iteration` in iteration.py):

    rollout     the policy answers this iteration's prompts (a seeded order that is a function of the
                iteration, so resuming needs no loader state)
    score       all four roles read the answers: old and reference log-probs, values, reward-model scores
    advantages  per-token rewards (score at the end, -beta * KL on every token), GAE, value targets
    update      `ppo.epochs` passes of clipped policy and value updates over shuffled mini-batches
    log         metrics.jsonl, tensorboard, progress; the KL coefficient adapts; a checkpoint every `save_every`

Then the SFT and PPO policies answer the same held-out prompts (evaluate.py), and the policy is saved as an
HF causal LM with the critic in `artifact/critic/`. Checkpoints are accelerate's full state: both models,
the optimizer, the scheduler, RNG, the KL coefficient and the PPO-ptx position.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import SAFE_WEIGHTS_NAME, set_seed
from safetensors import safe_open

from core.atomic import atomic_write_json
from core.checkpoints import commit_checkpoint
from core.errors import InputError
from core.history import append_record, attempt_marker, read_history
from rows.records import prompt_row_with_reference
from sections.scorers import weights_digest
from stages.common.chat import check_context_length, interleaved, load_chat_tokenizer, load_rows
from stages.common.entry import StageContext
from stages.common.hf_models import Loading, load_tokenizer, parameter_count
from stages.common.hf_trainer import quiet_libraries
from stages.common.labelers import labeler_scores
from stages.common.lora import lora_config
from stages.common.tracking import accelerate_trackers, log_table
from stages.ppo.config import PpoBatches, PpoStage, ppo_batches
from stages.ppo.evaluate import evaluate_policies, held_out_point
from stages.ppo.iteration import IterationSettings, ppo_iteration
from stages.ppo.losses import KLController
from stages.ppo.models import PpoModels
from stages.ppo.placement import (
    Generators,
    build_models,
    is_deepspeed,
    make_accelerator,
    no_zero3_init,
    rollout_engine,
    write_artifact,
    zero_stage,
)
from stages.ppo.ptx import PtxBatches
from stages.ppo.update import Optimization

#: in each checkpoint: the loop's state that is not the models' (the KL coefficient, the ptx position)
LOOP_STATE = "loop-state.json"

def train(ctx: StageContext) -> dict:
    """Run PPO, evaluate SFT vs PPO, save the policy and the critic; return the manifest metrics."""
    cfg: PpoStage = ctx.config
    quiet_libraries()
    run = set_up(ctx)
    first = resume(ctx, run)
    # a resumed run's earlier iterations (its held-out points are in metrics.jsonl, read by the report)
    history = [r for r in read_history(ctx.dirs.metrics) if 0 < r["step"] <= first and "score/mean" in r]
    history += iterate(ctx, run, first=first)

    # evaluate: SFT (the frozen reference) and PPO answer the same held-out prompts, seeded alike; then the
    # sample table, greedy base -> SFT -> PPO answers to the prompts the SFT stage sampled, all scored
    run.accelerator.wait_for_everyone()
    with run.models.frozen_in_use():
        evaluation = evaluate_policies(run.models, run.generators.of, run.tokenizer, held_out=run.held_out,
                                       judge=run.judge, sft_manifest=ctx.input_manifest("model"),
                                       prompts=cfg.evaluation.prompts, samples=cfg.evaluation.samples,
                                       seed=cfg.evaluation.seed, max_prompt_length=run.settings.max_prompt_length,
                                       max_chat_length=run.settings.max_chat_length,
                                       temperature=run.settings.temperature, top_p=run.settings.top_p,
                                       batch_size=run.batches.micro, device=run.accelerator.device)
    save(ctx, run)
    return {**evaluation, **summary(history, iterations=cfg.train.max_steps, rollout_batch=cfg.ppo.rollout_batch_size,
                                    mini_batch=cfg.ppo.mini_batch_size)}


@dataclass
class PpoRun:
    """What the loop, the evaluation and the save share, built once by `set_up`."""

    accelerator: Accelerator
    batches: PpoBatches
    settings: IterationSettings      # one iteration's settings, batches split over this launch's processes
    order: PromptOrder               # each iteration's prompts
    held_out: list[dict]             # held-out prompt rows, sources interleaved
    tokenizer: object
    loading: Loading
    lora: object                     # peft's LoraConfig, or None
    models: PpoModels
    optimization: Optimization
    generators: Generators
    kl: KLController
    ptx: PtxBatches | None
    judge: object                    # the evaluation's independent judge (labeler_scores), or None


def set_up(ctx: StageContext) -> PpoRun:
    """The accelerator, the prompts, the four roles placed for this launch with one optimizer over the policy
    and the critic, the generators, the KL controller, PPO-ptx's batches and the judge."""
    cfg: PpoStage = ctx.config
    ppo, gen = cfg.ppo, cfg.generation
    batches = ppo_batches(rollout=ppo.rollout_batch_size, mini=ppo.mini_batch_size, micro=ppo.micro_batch_size,
                          epochs=ppo.epochs, world=PartialState().num_processes)
    accelerator = make_accelerator(precision=cfg.train.precision, batches=batches, max_grad_norm=cfg.train.max_grad_norm,
                                   trackers=accelerate_trackers(cfg.tracking, stage=ctx.name, run_dir_name=ctx.dirs.run_dir.name),
                                   logs=ctx.dirs.logs, stage=ctx.name)
    set_seed(cfg.train.seed)

    # data: prompts (held-out ones with a human ranking also give the gold win rate)
    rows = load_rows(cfg.data, prompt_row_with_reference, cfg.train.seed)
    order = PromptOrder(rows.train, batch_size=ppo.rollout_batch_size, seed=cfg.train.seed,
                        rank=accelerator.process_index, world_size=accelerator.num_processes)

    # models: checked against each other before anything loads, then placed
    loading = Loading.of(cfg.model)
    settings = IterationSettings.of(cfg, batches)
    for role in ("model", "reward"):
        check_context_length(ctx.inputs[role], settings.max_chat_length,
                             "data.max_length + generation.max_new_tokens", loading=loading)
    tokenizer = load_chat_tokenizer(ctx.inputs["model"], "auto", loading)
    check_same_tokenizer(tokenizer, ctx.inputs["reward"], loading)
    refuse_proxy_judge(cfg, judge_dir=ctx.inputs.get("judge"), reward_dir=ctx.inputs["reward"])
    lora = lora_config(cfg.lora)
    models, optimization = build_models(
        accelerator, policy_dir=ctx.inputs["model"], reward_dir=ctx.inputs["reward"], lora=lora,
        frozen_models=ppo.frozen_models, offload_frozen=ppo.offload_frozen, learning_rate=cfg.train.learning_rate,
        critic_learning_rate=ppo.critic_learning_rate or cfg.train.learning_rate,
        betas=(cfg.train.adam_beta1, cfg.train.adam_beta2), weight_decay=cfg.train.weight_decay,
        lr_scheduler=cfg.train.lr_scheduler, warmup_steps=cfg.train.warmup_steps,
        updates=cfg.train.max_steps * batches.updates,
        max_grad_norm=cfg.train.max_grad_norm, loading=loading,
        activation_checkpointing=cfg.train.activation_checkpointing)
    engine = rollout_engine(accelerator, policy_dir=ctx.inputs["model"], tokenizer=tokenizer, settings=gen,
                            max_model_len=settings.max_chat_length, precision=cfg.train.precision,
                            seed=cfg.train.seed, stage=ctx.name)
    generators = Generators(models, accelerator, tokenizer, max_new_tokens=gen.max_new_tokens,
                            temperature=gen.temperature, top_p=gen.top_p, batch_size=gen.batch_size, engine=engine)

    # loop state beside the models: the KL coefficient and PPO-ptx's position in its corpus
    kl = KLController(ppo.kl.beta, ppo.kl.target, ppo.kl.horizon)
    ptx = None
    if ppo.ptx is not None:
        ptx = PtxBatches(ppo.ptx.data, tokenizer, block_size=ppo.ptx.block_size, batch_size=ppo.ptx.batch_size,
                         seed=cfg.train.seed, rank=accelerator.process_index, world_size=accelerator.num_processes,
                         device=accelerator.device)
    judge = None
    if cfg.evaluation.judge is not None:
        with no_zero3_init(accelerator):  # a whole judge model on every process, never ZeRO-3 partitions
            judge = labeler_scores(cfg.evaluation.judge, judge_dir=ctx.inputs.get("judge"), device=accelerator.device)
    if accelerator.is_main_process:
        placement = f"; ZeRO-{zero_stage(accelerator)}, frozen models {ppo.frozen_models}" if is_deepspeed(accelerator) else ""
        placement += ", frozen models offloaded to host memory" if ppo.offload_frozen else ""
        policy_parameters = parameter_count(accelerator.unwrap_model(models.trained).policy)
        print(f"[{ctx.name}] policy {policy_parameters / 1e6:.2f} M parameters; "
              f"{len(rows.train)} train / {len(rows.validation)} held-out prompts; {cfg.train.max_steps} iterations "
              f"of {ppo.rollout_batch_size} answers{placement}", flush=True)
    return PpoRun(accelerator=accelerator, batches=batches, settings=settings, order=order,
                  held_out=interleaved(rows.validation_by_source), tokenizer=tokenizer, loading=loading, lora=lora,
                  models=models, optimization=optimization, generators=generators, kl=kl, ptx=ptx, judge=judge)


def resume(ctx: StageContext, run: PpoRun) -> int:
    """Restore the latest checkpoint, if any: accelerate restores weights, optimizer, scheduler and RNG; beta
    and the ptx position are JSON. Returns the first iteration to run."""
    if ctx.resume_from is None:
        return 0
    loop_state = read_loop_state(ctx.resume_from.path, stage=ctx.name)
    if run.loading.quantization is None:
        run.accelerator.load_state(str(ctx.resume_from.path))
    else:  # QLoRA: the 4-bit weights' quantization constants are saved beside them but are not parameters, so a
        # strict load refuses them; what trains is checked instead
        run.accelerator.load_state(str(ctx.resume_from.path), strict=False)
        check_trained_weights(ctx.resume_from.path / SAFE_WEIGHTS_NAME, run.models.trained)
    run.kl.load_state_dict(loop_state["kl"])
    if run.ptx is not None:
        run.ptx.load_state_dict(loop_state["ptx"])
    return ctx.resume_from.step


def check_trained_weights(checkpoint_file: Path, trained: torch.nn.Module) -> None:
    """Every trained parameter (the adapter and the critic) is in the checkpoint a non-strict load read."""
    with safe_open(checkpoint_file, framework="pt") as saved:
        names = set(saved.keys())
    absent = [name for name, parameter in trained.named_parameters() if parameter.requires_grad and name not in names]
    if absent:
        raise InputError(f"{checkpoint_file}: the checkpoint lacks trained weights {absent[:3]}: restart the stage "
                         "(rlhf run CONFIG --restart STAGE)")


def iterate(ctx: StageContext, run: PpoRun, *, first: int) -> list[dict]:
    """Iterations `first`..max_steps (`ppo_iteration`), each logged, with held-out points every
    `evaluation.every` and a checkpoint every `save_every`. Returns their statistics."""
    cfg: PpoStage = ctx.config
    accelerator = run.accelerator
    every = cfg.evaluation.every
    point_settings = dict(rows=run.held_out[: cfg.evaluation.every_prompts or min(16, cfg.evaluation.prompts)],
                          judge=run.judge, max_prompt_length=run.settings.max_prompt_length,
                          max_chat_length=run.settings.max_chat_length, temperature=run.settings.temperature,
                          top_p=run.settings.top_p, batch_size=run.batches.micro, seed=cfg.evaluation.seed,
                          device=accelerator.device)

    def point(step: int) -> None:
        log_held_out(ctx, accelerator, run.models, generators=run.generators, tokenizer=run.tokenizer, step=step,
                     settings=point_settings)

    if accelerator.is_main_process:
        append_record(ctx.dirs.metrics, attempt_marker(first))
    accelerator.init_trackers("tensorboard", config={"stage": ctx.name, "fingerprint": ctx.fingerprint})
    ctx.progress.start(cfg.train.max_steps, first)
    started = time.monotonic()
    if every is not None and first == 0:  # where the curve starts: the SFT policy itself
        point(0)
    reduce_sum = functools.partial(accelerator.reduce, reduction="sum")  # rollout statistics over all processes
    history = []
    for i in range(first, cfg.train.max_steps):
        stats = ppo_iteration(run.models, run.optimization, step=i, prompts=run.order.prompts(i),
                              generators=run.generators, tokenizer=run.tokenizer, kl=run.kl, settings=run.settings,
                              ptx=run.ptx, reduce_sum=reduce_sum)
        history.append(stats)
        step = i + 1
        log_iteration(ctx, accelerator, step=step, total=cfg.train.max_steps, stats=stats, started=started,
                      first=first, every=cfg.train.log_every)
        if every is not None and (step % every == 0 or step == cfg.train.max_steps):
            point(step)
        if step % cfg.train.save_every == 0 and step < cfg.train.max_steps:
            loop_state = {"kl": run.kl.state_dict(), "ptx": run.ptx.state_dict() if run.ptx is not None else None}
            save_checkpoint(ctx, accelerator, step=step, keep_last=cfg.train.keep_last, loop_state=loop_state)
    ctx.progress.close()
    run.generators.close()
    for tracker in accelerator.trackers:  # not end_training(): it would also tear down the process group
        tracker.finish()
    return history


def save(ctx: StageContext, run: PpoRun) -> None:
    """The policy as an HF causal LM with the tokenizer, the critic beside it. The full weights are gathered on
    every process (ZeRO-3 shards), then written into freshly loaded models by the main one."""
    state = run.accelerator.get_state_dict(run.models.trained)
    if run.accelerator.is_main_process:
        with no_zero3_init(run.accelerator):
            write_artifact(state, policy_dir=ctx.inputs["model"], reward_dir=ctx.inputs["reward"], lora=run.lora,
                           tokenizer=run.tokenizer, directory=ctx.staged_artifact, loading=run.loading)
    run.accelerator.wait_for_everyone()


class PromptOrder:
    """Prompts for iteration i: a seeded shuffle per pass over the data, sliced for this process."""

    def __init__(self, rows: list[dict], *, batch_size: int, seed: int, rank: int, world_size: int):
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


def check_same_tokenizer(tokenizer, reward_dir, loading: Loading) -> None:
    """The critic starts from the reward model and reads the policy's tokens, so both must share one vocabulary
    (the reward model itself scores the chats rendered by its own tokenizer and template)."""
    if load_tokenizer(reward_dir, loading).get_vocab() != tokenizer.get_vocab():
        raise InputError(f"inputs.reward ({reward_dir}): its tokenizer differs from the policy's; train the reward "
                         "model from the same base (e.g. from the SFT stage)")


def refuse_proxy_judge(cfg: PpoStage, *, judge_dir, reward_dir) -> None:
    """evaluation.judge must not be the reward model PPO optimises, however it is named (inputs.judge another
    stage with the same weights, judge.model a path to the reward artifact): compared by the weights' content."""
    judge = cfg.evaluation.judge
    if judge is None or judge.kind != "judge":
        return
    judge_dir = judge_dir or judge.model
    if weights_digest(judge_dir) == weights_digest(reward_dir):
        raise InputError(f"evaluation.judge ({judge_dir}) has the weights of inputs.reward, the reward model PPO "
                         "optimises, so it would flatter PPO; judge with an independent one")


def save_checkpoint(ctx: StageContext, accelerator: Accelerator, *, step: int, keep_last: int,
                    loop_state: dict) -> None:
    """accelerate's full state and the loop's own (`loop_state`: the KL coefficient, the ptx position) as JSON
    into a fresh directory, then committed as `step-NNNNNN` by the main process. Not through accelerate's
    custom objects: it reloads those with pickle (`weights_only=False`), which runs code from a run
    directory someone else wrote."""
    written = ctx.dirs.checkpoints / f"incoming-{step:06d}"
    accelerator.save_state(str(written))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(written / LOOP_STATE, loop_state)
        commit_checkpoint(ctx.dirs, written, step=step, fingerprint=ctx.fingerprint, stage=ctx.name, keep_last=keep_last)
    accelerator.wait_for_everyone()


def read_loop_state(checkpoint: Path, *, stage: str) -> dict:
    """The KL coefficient and ptx position a checkpoint saved (save_checkpoint). A checkpoint holding accelerate
    custom objects (pickles this stage neither writes nor loads: an older version's, or planted) is refused,
    since accelerate's `load_state` would refuse it anyway, with a traceback."""
    stray = sorted(checkpoint.glob("custom_checkpoint_*.pkl"))
    if stray:
        raise InputError(f"{stray[0]}: a pickled accelerate custom object, which this stage neither writes nor loads "
                         f"(it could run code); remove it to resume, or re-run with --restart {stage}")
    try:
        state = json.loads((checkpoint / LOOP_STATE).read_text())
        float(state["kl"]["value"])
        return state
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{checkpoint / LOOP_STATE}: missing or unreadable, expected the KL coefficient and ptx "
                         f"position as JSON (checkpoints before it was kept so cannot resume); re-run with "
                         f"--restart {stage}") from None


def log_held_out(ctx: StageContext, accelerator: Accelerator, models, *, generators: Generators, tokenizer, step: int,
                 settings: dict) -> None:
    """A held-out point (stages.ppo.evaluate.held_out_point) into the trackers and metrics.jsonl. Every
    process evaluates (generation under ZeRO-3 is collective); the main one logs."""
    # its own random stream: evaluating does not change the rollouts that follow
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    sync_seconds = generators.refresh(step=step)  # the engine's weight push, when a point comes before a rollout
    with models.frozen_in_use(), torch.random.fork_rng(devices=devices):
        point, answers = held_out_point(models, generators.of("policy"), tokenizer, **settings)
    if generators.engine is not None:
        point["heldout/sync_seconds"] = sync_seconds
    accelerator.log(point, step=step)
    if accelerator.is_main_process:
        log_table(accelerator.trackers, name="heldout/answers", table=answers.first(ctx.config.tracking.table_rows),
                  step=step)
        append_record(ctx.dirs.metrics, {"step": step, "time": round(time.time(), 3), **point})
        judged = f"  judge {point['heldout/judge_score']:.3g}" if "heldout/judge_score" in point else ""
        print(f"[{ctx.name}] held out at iteration {step}: proxy {point['heldout/proxy_score']:.3g}{judged}  "
              f"kl {point['heldout/kl']:.3g}  stop rate {point['heldout/stop_rate']:.2g}", flush=True)


def log_iteration(ctx: StageContext, accelerator: Accelerator, *, step: int, total: int, stats: dict,
                  started: float, first: int, every: int) -> None:
    """Trackers, progress and metrics.jsonl every iteration; a terminal line every `every` iterations (and for
    the first and the last of this attempt)."""
    accelerator.log(stats, step=step)
    ctx.progress.update(step, {"score": stats["score/mean"], "kl": stats["kl/mean"]})
    if not accelerator.is_main_process:
        return
    append_record(ctx.dirs.metrics, {"step": step, "time": round(time.time(), 3), **stats})
    if step % every and step != total and step != first + 1:
        return
    elapsed = time.monotonic() - started
    eta = elapsed / (step - first) * (total - step)
    print(f"[{ctx.name}] iteration {step}/{total}  score {stats['score/mean']:.3g}  kl {stats['kl/mean']:.3g}  "
          f"beta {stats['kl/beta']:.3g}  entropy {stats['policy/entropy']:.3g}  length {stats['response/length']:.3g}  "
          f"| sync {stats['time/sync']:.1f}s generate {stats['time/generate']:.1f}s score {stats['time/score']:.1f}s train {stats['time/train']:.1f}s "
          f"| {elapsed:.0f}s, eta {eta:.0f}s", flush=True)


def summary(history: list[dict], *, iterations: int, rollout_batch: int, mini_batch: int) -> dict:
    """Training metrics for the manifest: first and last scores and KL, and where the time went."""
    if not history:
        return {"train/iterations": iterations}
    mean = lambda key: sum(h[key] for h in history) / len(history)  # noqa: E731
    total = mean("time/iteration")
    return {
        "train/iterations": iterations,
        "train/rollout_batch": rollout_batch,
        "train/mini_batch": mini_batch,
        "train/first_score": history[0]["score/mean"],
        "train/last_score": history[-1]["score/mean"],
        "train/last_kl": history[-1]["kl/mean"],
        "train/beta": history[-1]["kl/beta"],
        "time/iteration_s": total,
        "time/generate_share": mean("time/generate") / total if total else math.nan,
        "time/score_share": mean("time/score") / total if total else math.nan,
        "time/train_share": mean("time/train") / total if total else math.nan,
        # weights into the vLLM engine (absent from iterations logged before the phase existed)
        "time/sync_share": sum(h.get("time/sync", 0.0) for h in history) / len(history) / total if total else math.nan,
    }
