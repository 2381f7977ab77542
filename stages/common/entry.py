"""The stage entry protocol, shared by every `stages.<kind>` module.

A stage is launched either by `rlhf run` (`--spec RUN_DIR/<stage>/spec.json`, written by the runner) or by
hand (`--config PIPELINE.yaml --stage NAME`: the orchestrator builds the same spec in a subprocess, `rlhf spec`,
and this process takes the run lock). A stage that is already fresh says so and exits 0, touching nothing,
unless `--restart`. Then, on every process: checkpoints are sorted out (resume, clean, or refuse a changed
config), the stage's `train(ctx)` runs and writes its artifact to `ctx.staged_artifact`, and the main process
commits the artifact and the manifest atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from accelerate import PartialState

from core.checkpoints import Checkpoint, discard_checkpoints, incomplete_checkpoint_dirs, resume_point
from core.distributed import FSDP_REFUSAL, deepspeed_requested, fsdp_requested
from core.errors import InputError
from core.layout import StageDirs
from core.lock import RunLock
from core.manifest import commit_artifact, read_manifest, stage_manifest
from core.progress import StageProgress
from core.removal import remove_inside
from core.schema import StageConfig
from stages.common.checkpoint_safety import refuse_unsafe_pickles

# before any stage module imports DeepSpeed (each `__main__` imports this module first): without CUDA it would
# otherwise guess the accelerator and warn about it in every process's log
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


@dataclass
class StageContext:
    """Everything a stage's `train` function gets."""

    spec: dict
    config: StageConfig  # typed, validated again in this process
    dirs: StageDirs
    inputs: dict[str, Path]  # input role -> artifact directory of the upstream stage
    resume_from: Checkpoint | None
    progress: StageProgress  # report steps and metrics here (progress.json, terminal bar)

    @property
    def name(self) -> str:
        """The stage's name in the pipeline file."""
        return self.spec["stage"]

    @property
    def fingerprint(self) -> str:
        return self.spec["fingerprint"]

    @property
    def staged_artifact(self) -> Path:
        """Write the artifact here; it becomes `dirs.artifact` when the stage commits."""
        return self.dirs.staged_artifact

    def input_manifest(self, role: str) -> dict | None:
        """The manifest of the stage that produced input `role` (e.g. its samples), if it is readable."""
        return read_manifest(StageDirs(Path(self.spec["inputs"][role]["artifact"]).parent))


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one pipeline stage (normally under `accelerate launch`).")
    parser.add_argument("--spec", type=Path, help="spec.json written by `rlhf run`")
    parser.add_argument("--config", type=Path, help="pipeline file (by-hand launch)")
    parser.add_argument("--stage", help="stage name in the pipeline file (by-hand launch)")
    parser.add_argument("--restart", action="store_true", help="discard this stage's checkpoints first "
                                                               "(and train a fresh stage again)")
    args = parser.parse_args(argv)
    if bool(args.spec) == bool(args.config):
        parser.error("give either --spec, or --config and --stage")
    if args.config and not args.stage:
        parser.error("--config needs --stage")
    return args


def spec_by_hand(config: Path, stage: str, restart: bool) -> dict:
    """The spec `rlhf run` would write for `stage`, asked of the orchestrator (`rlhf spec`) in a subprocess:
    stage code never imports the orchestrator. Its bad-input messages are passed on as they are."""
    command = [sys.executable, "-m", "pipeline.cli", "spec", str(config), "--stage", stage]
    result = subprocess.run(command + (["--restart"] if restart else []), capture_output=True, text=True)
    if result.returncode != 0:
        problems = [line.removeprefix("error: ") for line in result.stderr.strip().splitlines()]
        raise InputError(problems or f"rlhf spec {config} --stage {stage} exited with code {result.returncode}")
    return json.loads(result.stdout)


def _prepare_checkpoints(dirs: StageDirs, fingerprint: str, restart: bool, *, name: str) -> None:
    """Main process: drop torn and leftover checkpoints; refuse checkpoints of another config, and a
    checkpoints folder that is a symlink (checkpoints are written and rotated there: never outside the run)."""
    if dirs.checkpoints.is_symlink():
        raise InputError(f"{dirs.checkpoints}: a symlink; rlhf writes and deletes checkpoints there, so it must be a "
                         "folder of the run directory's own")
    if restart:
        discard_checkpoints(dirs)
    point = resume_point(dirs, fingerprint)
    if point.conflict is not None and point.resume is None:
        raise InputError(
            f"stage {name}: {dirs.checkpoints} holds an interrupted run (step {point.conflict.step}) under a "
            f"different config; re-run with --restart {name} to discard it, or restore the old config to resume")
    for stale in [c.path for c in point.leftovers] + incomplete_checkpoint_dirs(dirs):
        remove_inside(stale, inside=dirs.run_dir)


def cpu_launch() -> str | None:
    """How several processes without CUDA were launched: "deepspeed", "ddp", or None (one process, or GPUs).

    accelerate does not infer this itself: without `cpu=True` or a backend it treats such a process as
    alone. Both cases run over gloo.
    """
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    return "deepspeed" if deepspeed_requested() else "ddp"


def check_precision(precision: str) -> None:
    """Refuse a precision this machine cannot train in: fp16 needs CUDA (its loss scaling runs there); bf16
    and fp32 train on CPUs too."""
    if precision == "fp16" and not torch.cuda.is_available():
        raise InputError("train.precision: fp16 needs a CUDA GPU (loss scaling runs there); on a CPU use bf16 or fp32")


def process_state() -> PartialState:
    """accelerate's process state, also for several processes on CPU (see cpu_launch)."""
    launch = cpu_launch()
    if launch == "deepspeed":
        return PartialState(backend="gloo")
    if launch == "ddp":
        return PartialState(cpu=True, backend="gloo")
    return PartialState()


def die_with_launcher() -> None:
    """On Linux, end this stage process when the process that launched it dies. torchrun starts each worker
    in a session of its own, so a SIGKILL to `rlhf run`'s process group (or a killed launcher) would leave
    the workers training on, writing checkpoints while a re-run starts beside them."""
    if not sys.platform.startswith("linux") or "LOCAL_RANK" not in os.environ:  # not under torchrun
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the launcher was gone before the request took effect
        os._exit(1)


def run_stage(train: Callable[[StageContext], dict], config_class: type[StageConfig],
              argv: list[str] | None = None) -> None:
    """Parse the command line, run `train` on a `config_class` config, commit its artifact and manifest;
    exit 2 on bad input, 0 without training when a by-hand launch finds the stage fresh."""
    die_with_launcher()
    args = _arguments(argv)
    state = process_state()
    started_at = datetime.now(timezone.utc)
    t0 = time.monotonic()
    try:
        spec = json.loads(args.spec.read_text()) if args.spec else spec_by_hand(args.config, args.stage, args.restart)
        if spec.get("state") == "fresh" and not spec.get("restart"):
            if state.is_main_process:
                print(f"[{spec['stage']}] fresh: {spec.get('reason', 'up to date')}; nothing to do "
                      "(--restart trains it again)", flush=True)
            return
        dirs = StageDirs(Path(spec["stage_dir"]))
        config = config_class.model_validate(spec["config"], context={"base_dir": Path(spec["pipeline"]).parent})
        if fsdp_requested():
            raise InputError(f"stage {spec['stage']}: the accelerate config asks for FSDP; {FSDP_REFUSAL}")
        misfits = config.world_problems(state.num_processes)
        if misfits:
            raise InputError([f"stage {spec['stage']}: {'.'.join(map(str, loc))}: {message} "
                              f"(on {state.num_processes} processes)" for loc, message in misfits])
        lock = RunLock(Path(spec["run_dir"])) if (args.config and state.is_main_process) else contextlib.nullcontext()
        with lock:
            progress = StageProgress(dirs, spec["stage"], spec["fingerprint"], is_main=state.is_main_process)
            try:
                _run_attempt(train, spec=spec, config=config, dirs=dirs, state=state, progress=progress,
                             started_at=started_at, t0=t0)
            except (KeyboardInterrupt, BrokenPipeError):  # stopped, or the launcher that read our output died
                progress.finish("interrupted")
                raise
            except Exception as e:
                progress.finish("failed", error=_one_line(e))
                raise
            progress.finish("done")
        # leave no collective's threads running into interpreter shutdown: under gloo a rank could otherwise
        # abort there ("terminate called without an active exception") after the stage had committed
        distributed = state.num_processes > 1
        state.destroy_process_group()
        if distributed:
            # DeepSpeed's CPU shared-memory collectives (deepspeed_shm_comm_op) still abort a rank in interpreter
            # teardown now and then, when the machine is loaded (a ZeRO-3 stage, after its commit); the stage's
            # work is committed and its files closed, so the process leaves without that teardown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    except InputError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(2)


def _one_line(error: Exception) -> str:
    """An exception as one line for progress.json: type and first line of the message."""
    problems = error.problems if isinstance(error, InputError) else None
    text = "; ".join(problems) if problems else (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text}"[:500]


def peak_memory_gb() -> float | None:
    """The main process's peak: accelerator memory allocated (CUDA), else its peak resident set (Linux)."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 1e9, 3)
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return round(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024 / 1e9, 3)
    except (OSError, StopIteration):
        return None


def _run_attempt(train: Callable[[StageContext], dict], *, spec: dict, config: StageConfig, dirs: StageDirs,
                 state: PartialState, progress: StageProgress, started_at: datetime, t0: float) -> None:
    """Sort out checkpoints, train, and commit the artifact and manifest (main process)."""
    if state.is_main_process:
        dirs.root.mkdir(parents=True, exist_ok=True)
        _prepare_checkpoints(dirs, spec["fingerprint"], spec.get("restart", False), name=spec["stage"])
        remove_inside(dirs.staged_artifact, inside=dirs.run_dir)
    state.wait_for_everyone()
    point = resume_point(dirs, spec["fingerprint"])
    if point.resume is not None:
        refuse_unsafe_pickles(point.resume.path, stage=spec["stage"])
    ctx = StageContext(spec=spec, config=config, dirs=dirs,
                       inputs={role: Path(i["artifact"]) for role, i in spec["inputs"].items()},
                       resume_from=point.resume, progress=progress)
    if ctx.resume_from and state.is_main_process:
        print(f"[{ctx.name}] resuming from {ctx.resume_from.path.name} (step {ctx.resume_from.step})", flush=True)
    metrics = train(ctx)
    metrics.setdefault("resources/peak_memory_gb", peak_memory_gb())
    metrics.setdefault("resources/cpu_threads", torch.get_num_threads())  # intra-op threads of the main process
    state.wait_for_everyone()
    if state.is_main_process:
        manifest = stage_manifest(spec, metrics=metrics, resumed_from=ctx.resume_from.step if ctx.resume_from else None,
                                  started_at=started_at, wall_time_s=time.monotonic() - t0,
                                  world_size=state.num_processes)
        commit_artifact(dirs, ctx.staged_artifact, manifest)
        print(f"[{ctx.name}] committed {dirs.artifact} and {dirs.manifest.name}", flush=True)
    state.wait_for_everyone()
