"""Wiring shared by the stages built on the Hugging Face Trainer (pretrain, sft, reward).

The Trainer owns the training loop, checkpoint contents (weights, optimizer, scheduler, RNG, trainer state
with the data position) and resuming. We add what it lacks: atomic checkpoint commits under our
`checkpoints/step-NNNNNN/` names with rotation, a global batch size that holds for any process count, and
one log line per `log_every` steps plus metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import PartialState
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TrackioCallback

from core.checkpoints import commit_checkpoint
from core.errors import InputError
from core.history import append_record, attempt_marker
from sections.common import TrainSettings
from stages.common.entry import StageContext, check_precision, cpu_launch
from stages.common.hf_models import is_quantized
from stages.common.tracking import trainer_tracking


def gradient_accumulation(train: TrainSettings, world_size: int) -> tuple[int, int]:
    """(micro batch per process, accumulation steps) that give train.batch_size sequences per step."""
    micro = train.micro_batch_size or train.batch_size
    micro = min(micro, max(1, train.batch_size // world_size))
    steps, rest = divmod(train.batch_size, micro * world_size)
    if rest or steps == 0:
        raise InputError(f"train.batch_size ({train.batch_size}) must be a multiple of micro_batch_size ({micro}) "
                         f"x processes ({world_size})")
    return micro, steps


def training_arguments(ctx: StageContext, train: TrainSettings, config_class: type = TrainingArguments,
                       **overrides) -> TrainingArguments:
    """TrainingArguments (or a subclass such as TRL's SFTConfig) for a stage: our batch, checkpoint dir and
    cadence, tensorboard under logs/, no tqdm. `overrides` are passed through."""
    micro, accumulation = gradient_accumulation(train, PartialState().num_processes)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(ctx.dirs.logs / "tensorboard")
    kwargs = dict(
        output_dir=str(ctx.dirs.checkpoints),
        max_steps=train.max_steps or -1,  # -1: the Trainer counts the steps of `num_train_epochs`
        num_train_epochs=train.epochs or 1,
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        max_grad_norm=train.max_grad_norm,
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        seed=train.seed,
        data_seed=train.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        logging_steps=train.log_every,
        logging_first_step=True,
        eval_strategy="steps" if train.eval_every else "no",
        eval_steps=train.eval_every,
        save_strategy="steps",
        save_steps=train.save_every,
        **trainer_tracking(ctx.config.tracking, stage=ctx.name, run_dir_name=ctx.dirs.run_dir.name),
        disable_tqdm=True,
        dataloader_num_workers=0,
        activation_checkpointing=train.activation_checkpointing,
        gradient_checkpointing=None,  # the old name of activation_checkpointing: TRL's configs default it to True
        use_liger_kernel=bool(train.liger_kernel),
    )
    check_precision(train.precision)
    launch = cpu_launch()  # TrainingArguments sets up its own process state: tell it about CPU processes
    if launch is not None:
        kwargs.update(ddp_backend="gloo", use_cpu=launch == "ddp")
    elif not torch.cuda.is_available():  # one process on a CPU: say so, or bf16 is refused as "no GPU"
        kwargs["use_cpu"] = True
    kwargs.update(overrides)
    return config_class(**kwargs)


def training_metrics(trainer: Trainer, result, train: TrainSettings, *, parameters: int) -> dict:
    """What a Trainer stage's manifest records of its training: loss, steps, runtime, the effective batch, and
    the model's parameters (all, and those trained)."""
    micro, accumulation = gradient_accumulation(train, trainer.accelerator.num_processes)
    return {
        "train/loss": result.training_loss,
        "train/steps": trainer.state.global_step,
        "train/runtime_s": result.metrics.get("train_runtime"),
        "train/effective_batch": micro * accumulation * trainer.accelerator.num_processes,
        "model/parameters": parameters,
        "model/trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }


def quiet_libraries() -> None:
    """No per-batch progress bars from datasets/transformers in the logs (LogLines reports progress), and no
    deprecation warning that only the libraries can act on."""
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    # TRL 1.16 reads the alias transformers 5.x deprecated; the warning is theirs to fix, not the user's
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # DeepSpeed 0.19 calls torch.distributed's deprecated collectives on every ZeRO step: a third of a ZeRO log
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def attach(trainer: Trainer, ctx: StageContext, train: TrainSettings) -> Trainer:
    """Give a Trainer our checkpoint commits and log lines (replacing its raw dict printer), and a QLoRA
    adapter fp32 weights."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CommitCheckpoints(ctx, train.keep_last))
    trainer.add_callback(LogLines(ctx))
    if is_quantized(trainer.model):
        adapters_in_fp32(trainer.model)
    return trainer


def adapters_in_fp32(model: torch.nn.Module) -> None:
    """The trained (adapter) weights of a QLoRA model in fp32, the master precision every stage trains in. TRL
    stores them in bf16, but the Trainer resumes them through peft's `load_adapter`, which upcasts to fp32: a
    resumed run would train in another precision than an uninterrupted one, and end with other weights."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def evaluate_before_training(trainer: Trainer) -> dict:
    """The input model's evaluation metrics, or {} under DeepSpeed: there, an evaluation before train()
    builds an inference-only engine that train() then cannot use (transformers 5.23)."""
    if trainer.is_deepspeed_enabled:
        return {}
    with tracked_outside_training(trainer):
        return trainer.evaluate()


def final_evaluation(trainer: Trainer) -> dict:
    """The trained model's evaluation metrics: the Trainer's own evaluation at the last step when its schedule
    ran one there (a second pass would repeat it, about 90 s for SmolLM2's grpo), otherwise a fresh one."""
    last_step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == last_step and any(key.startswith("eval_") for key in entry):
            return {key: value for key, value in entry.items() if key.startswith("eval_") or key == "epoch"}
    with tracked_outside_training(trainer):
        return trainer.evaluate()


@contextlib.contextmanager
def tracked_outside_training(trainer: Trainer):
    """An evaluation before train() or after it, with trackio's run open: TRL 1.16's profiling logs to trackio
    whenever trackio is in report_to, trackio refuses a log without a run, and the Trainer's TrackioCallback
    opens the run only at on_train_begin and finishes it at on_train_end. The callback itself opens it (the
    same run, resumed) and finishes it around the evaluation."""
    callbacks = [c for c in trainer.callback_handler.callbacks if isinstance(c, TrackioCallback)]
    for callback in callbacks:
        callback.setup(trainer.args, trainer.state, trainer.model)
    try:
        yield
    finally:
        for callback in callbacks:
            callback.on_train_end(trainer.args, trainer.state, trainer.control, model=trainer.model)


def save_artifact(trainer: Trainer, directory: Path) -> None:
    """The model and tokenizer in HF format (ZeRO-3 weights gathered by the Trainer), without Trainer extras.

    The KV cache is switched back on in the saved config (trainers turn it off for training), so that
    `generate` on the artifact is fast.
    """
    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True
    trainer.save_model(str(directory))
    if trainer.args.should_save:
        (directory / "training_args.bin").unlink(missing_ok=True)


class CommitCheckpoints(TrainerCallback):
    """Turn the Trainer's `checkpoint-N` into a complete `step-NNNNNN` atomically, then rotate.

    The Trainer writes into `checkpoint-N`; once every process is done, the main process writes the
    marker (fingerprint and step) and renames the directory. A crash at any point leaves either a complete
    `step-*` directory or an incomplete one that readers ignore.
    """

    def __init__(self, ctx: StageContext, keep_last: int):
        self.ctx = ctx
        self.keep_last = keep_last

    def on_save(self, args, state, control, **kwargs):
        """Called by the Trainer on every process right after it saved a checkpoint."""
        partial = PartialState()
        partial.wait_for_everyone()
        if partial.is_main_process:
            written = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            commit_checkpoint(self.ctx.dirs, written, step=state.global_step, fingerprint=self.ctx.fingerprint,
                              stage=self.ctx.spec["stage"], keep_last=self.keep_last)
            (Path(args.output_dir) / "README.md").unlink(missing_ok=True)  # TRL's model card, not a checkpoint
        partial.wait_for_everyone()
        return control


class LogLines(TrainerCallback):
    """One line per log event on the main process (step, loss, lr, elapsed, ETA), metrics.jsonl (one attempt
    marker, then every log record) and the stage's progress (progress.json, a bar on a terminal)."""

    def __init__(self, ctx: StageContext):
        self.name = ctx.spec["stage"]
        self.progress = ctx.progress
        self.metrics_file = ctx.dirs.logs / "metrics.jsonl"
        self.t0 = time.monotonic()
        self.first_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        """Mark where this attempt starts (the resumed step) in metrics.jsonl and in the progress."""
        self.t0, self.first_step = time.monotonic(), state.global_step
        if state.is_world_process_zero:
            append_record(self.metrics_file, attempt_marker(state.global_step))
        self.progress.start(state.max_steps, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        """Advance the progress after every optimizer step."""
        self.progress.update(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        """Training is over: remove the bar (final evaluation and saving follow)."""
        self.progress.close()

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: PLR0917 (TrainerCallback's signature)
        """Print and append one record."""
        if not state.is_world_process_zero or not logs:
            return
        elapsed = time.monotonic() - self.t0
        done = state.global_step - (self.first_step or 0)
        eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 else float("nan")
        append_record(self.metrics_file, {"step": state.global_step, "time": round(time.time(), 3), **logs})
        shown = {k: v for k, v in logs.items() if k in _SHOWN}
        if not shown:  # end-of-training summaries: kept in metrics.jsonl only
            return
        line = "  ".join(f"{k} {_fmt(v)}" for k, v in shown.items())
        if not state.max_steps:  # an evaluation before train() starts
            print(f"[{self.name}] before training: {line}", flush=True)
            return
        self.progress.update(state.global_step, {k: v for k, v in shown.items() if k in _PROGRESS})
        print(f"[{self.name}] step {state.global_step}/{state.max_steps}  {line}  "
              f"| {elapsed:.0f}s, eta {'?' if math.isnan(eta) else f'{eta:.0f}s'}", flush=True)


_SHOWN = ("loss", "eval_loss", "eval_pairwise_accuracy", "learning_rate", "grad_norm")
_PROGRESS = ("loss", "eval_loss", "eval_pairwise_accuracy")  # beside the bar and in `rlhf status`


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
