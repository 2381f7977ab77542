"""Execute a plan: one `accelerate launch -m stages.<kind>` subprocess per stage that is not fresh."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from core.atomic import atomic_write_json
from core.distributed import FSDP_REFUSAL, QLORA_UNDER_DEEPSPEED, cuda_visible_here, launched_here
from core.errors import InputError, StageFailed
from core.hubdata import hub_model_problem
from core.layout import RUN_RECORD, StageDirs
from core.lock import RunLock
from core.progress import bar_fields, new_attempt, progress_bar, read_progress, write_progress
from pipeline import dag
from pipeline.config import Pipeline
from pipeline.overrides import override_notes, run_record
from pipeline.plan import RunPlan, StageState, hasher_for, make_plan, stage_spec, stage_state
from pipeline.report import is_current, write_report
from pipeline.status import STATE_STYLE
from sections.common import ModelSource


def make_console() -> Console:
    """A console that wraps to the terminal, but not when piped into a log or another program."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def print_override_notes(pipeline: Pipeline, console: Console) -> None:
    """The overrides a command on the pipeline file applies, and those of the last run it does not."""
    for line in override_notes(run_dir=pipeline.run_dir, pipeline_file=pipeline.path, applied=pipeline.overrides):
        console.print(line, markup=False, soft_wrap=True)


def status_table(statuses: dict[str, StageState], plan: RunPlan | None = None) -> Table:
    """A table of stages: kind, state, short fingerprint, why, and (with a plan) what happens now."""
    table = Table(show_edge=False, pad_edge=False)
    for column in ("stage", "kind", "state", "fingerprint"):
        table.add_column(column, no_wrap=True)
    table.add_column("why", overflow="fold")  # never cut the reason short
    if plan is not None:
        table.add_column("action")
    for name, s in statuses.items():
        row = [name, s.kind, f"[{STATE_STYLE.get(s.state, 'white')}]{s.state}[/]", s.fingerprint[:12], s.reason]
        if plan is not None:
            row.append("[bold]run[/]" if name in plan.to_run else f"skip ({plan.skipped.get(name, '')})")
        table.add_row(*row)
    return table


def launch_command(pipeline: Pipeline, name: str, spec_path: Path) -> list[str]:
    """The `accelerate launch` command line that runs one stage from its spec file."""
    launch = pipeline.launch_for(name)
    # RLHF_STAGE_LAUNCHER replaces `python -m accelerate.commands.launch`, e.g. with `srun ... node_launch.sh`
    # on SLURM (launch/slurm/), which runs one `accelerate launch` per node with that node's rank
    launcher = os.environ.get("RLHF_STAGE_LAUNCHER")
    cmd = shlex.split(launcher) if launcher else [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--quiet"]
    if launch.accelerate_config:
        cmd += ["--config_file", str(launch.accelerate_config)]
    else:
        # the values accelerate would otherwise guess, and warn about, for a single machine
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--num_processes", str(launch.num_processes or 1)]
    if launch.accelerate_config and launch.num_processes:
        cmd += ["--num_processes", str(launch.num_processes)]
    if not launcher and "OMP_NUM_THREADS" not in os.environ:
        cmd += ["--num_cpu_threads_per_process", str(cpu_threads_per_process(pipeline.world_size(name)))]
    return cmd + ["-m", pipeline.stages[name].module, "--spec", str(spec_path)]


def cpu_threads_per_process(processes: int) -> int:
    """This machine's usable cores shared among a stage's local processes. Without it `accelerate launch` sets
    OMP_NUM_THREADS=1 for any launch it does not know to be CPU-only (no `--cpu`, no config), so a one-process
    stage on a CPU ran on one core however many there were."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes))


def hub_models(section) -> list[str]:
    """Every `model.hub` (owner/name@revision) set anywhere in a stage's config (its model, a judge's)."""
    found = []
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, ModelSource) and value.hub:
            found.append(value.hub)
        if isinstance(value, BaseModel):
            found += hub_models(value)
    return found


def before_launch_problems(pipeline: Pipeline, names: list[str]) -> list[str]:
    """What the stages `names` would refuse once launched: the content of their data (files read, rows
    checked), Hub models neither cached nor reachable, batch sizes that do not fit their process count, launch
    engines a kind cannot run under (FSDP; QLoRA under DeepSpeed), fp16 where the stages would run without a
    GPU. `rlhf plan` and `rlhf run` check the same, so a plan that says run does not then refuse."""
    problems = [p for name in names for p in pipeline.stages[name].data_problems()]
    hubs = {hub: name for name in names for hub in hub_models(pipeline.stages[name])}
    problems += [f"stage {name}: model.hub: {found}" for hub, name in hubs.items()
                 if (found := hub_model_problem(hub)) is not None]
    for name in names:
        world = pipeline.world_size(name)
        problems += [f"stage {name}: {'.'.join(map(str, loc))}: {message} (on {world} processes)"
                     for loc, message in pipeline.stages[name].world_problems(world)]
        engine = pipeline.accelerate_settings(name).get("distributed_type")
        config = pipeline.launch_for(name).accelerate_config
        if engine == "FSDP":
            problems.append(f"stage {name}: launch.accelerate_config: {config} asks for FSDP; {FSDP_REFUSAL}")
        precision = getattr(getattr(pipeline.stages[name], "train", None), "precision", None)
        on_cpu = pipeline.accelerate_settings(name).get("use_cpu") or not cuda_visible_here()
        if precision == "fp16" and launched_here() and on_cpu:
            problems.append(f"stage {name}: train.precision: fp16 needs a CUDA GPU (loss scaling runs there) and "
                            "this launch has none; use bf16 or fp32")
        loading = getattr(pipeline.stages[name], "model", None)
        if engine == "DEEPSPEED" and getattr(loading, "quantization", None) is not None:
            problems.append(f"stage {name}: model.quantization: {QLORA_UNDER_DEEPSPEED} (launch.accelerate_config: "
                            f"{config})")
    return problems


def run_pipeline(pipeline: Pipeline, only: list[str] | None = None, start: str | None = None,
                 *, restart: list[str] | None = None, dry_run: bool = False, save_overrides: bool = False,
                 console: Console | None = None) -> None:
    """Plan, then launch every stage that is not fresh, in order; raise StageFailed on the first failure.
    The run directory records the overrides applied (commands on it describe the run as it was made) and,
    with `save_overrides`, keeps them for later commands on the file (pipeline.overrides)."""
    console = console or make_console()
    restart = list(restart or [])
    with RunLock(pipeline.run_dir):
        print_override_notes(pipeline, console)
        if not dry_run:
            saved = pipeline.overrides if save_overrides else run_record(pipeline.run_dir, pipeline.path)["saved"]
            atomic_write_json(pipeline.run_dir / RUN_RECORD, {"pipeline": str(pipeline.path),
                                                              "overrides": pipeline.overrides, "saved": saved})
        hasher = hasher_for(pipeline)
        plan = make_plan(pipeline, only, start, restart=restart, hasher=hasher)
        console.print(status_table(plan.statuses, plan))
        if dry_run or not plan.to_run:
            console.print("nothing to run" if not plan.to_run else "dry run: nothing launched")
            if not dry_run:
                _write_report(pipeline, console, only_if_outdated=True)
            return
        problems = before_launch_problems(pipeline, plan.to_run)
        if problems:
            raise InputError(problems)
        statuses = plan.statuses
        timings: dict[str, float] = {}
        waiting: dict[str, str] = {}  # stage -> why it cannot run yet (people have not labeled enough)
        held_back: set[str] = set()
        for name in plan.to_run:
            if name in held_back:
                continue
            why = pipeline.stages[name].awaiting(pipeline.run_dir, name)
            if why is not None:
                waiting[name] = why
                held_back |= dag.downstream(pipeline.stages, [name])
                console.print(f"[yellow]stage {name}: {why}[/]; label with `rlhf label {pipeline.run_dir}`; "
                              "`rlhf run` goes on from here once enough are labeled")
                continue
            dirs = statuses[name].dirs
            spec = stage_spec(pipeline, name, statuses, hasher=hasher, restart=name in restart)
            atomic_write_json(dirs.spec, spec)
            started = time.monotonic()
            console.rule(f"[bold]{name}[/] ({pipeline.stages[name].kind}): {statuses[name].reason}")
            log = _next_log(dirs.logs)
            code = _stream(launch_command(pipeline, name, dirs.spec), log, dirs if console.is_terminal else None,
                           name=name)
            timings[name] = time.monotonic() - started
            done = stage_state(name, statuses[name].kind, dirs, payload=statuses[name].payload,
                               inputs=statuses[name].inputs)
            if code != 0:
                record_failure(dirs, statuses[name].fingerprint, code, log=log)
            if code != 0 or done.state != "fresh":
                cause = f"exit code {code}" if code != 0 else f"it exited 0 but is {done.state}: {done.reason}"
                raise StageFailed(
                    f"stage {name} failed ({cause}); log: {log}; "
                    f"resume with: rlhf run {pipeline.path}")
            statuses[name] = done
            console.print(f"[green]stage {name} done[/] in {timings[name]:.1f} s")
        if timings:
            console.print("finished: " + ", ".join(f"{n} {t:.1f} s" for n, t in timings.items()))
        if waiting:
            console.print("stopped, waiting for labels: " + "; ".join(f"{n} {why}" for n, why in waiting.items())
                          + f" (held back: {', '.join(sorted(held_back - set(waiting))) or 'nothing else'})")
        _write_report(pipeline, console)


def _write_report(pipeline: Pipeline, console: Console, only_if_outdated: bool = False) -> None:
    """RUN_DIR/report/ after a run (a fully fresh run rewrites it only if it is missing or outdated)."""
    if only_if_outdated and is_current(pipeline):
        return
    console.print(f"report: {write_report(pipeline)}")


def _next_log(logs: Path) -> Path:
    logs.mkdir(parents=True, exist_ok=True)
    attempts = [int(p.stem.split("-")[1]) for p in logs.glob("attempt-*.log") if p.stem.split("-")[1].isdigit()]
    return logs / f"attempt-{max(attempts, default=0) + 1}.log"


def record_failure(dirs: StageDirs, fingerprint: str, code: int, *, log: Path) -> None:
    """Mark the stage's latest attempt failed in progress.json, with the exit code and the log (the stage
    itself records the error when it gets to; a crash before or beyond that is recorded here)."""
    record = read_progress(dirs)
    if record is None or record.get("fingerprint") != fingerprint:
        record = dict(new_attempt(fingerprint), started_at=None)
    if record.get("state") != "failed":
        cause = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        record.update(state="failed", error=f"the stage process {cause}", ended_at=time.time())
    record.update(exit_code=code, log=str(log))
    write_progress(dirs, record)


def _stream(cmd: list[str], log: Path, progress_of: StageDirs | None = None, *, name: str = "") -> int:
    """Run `cmd`, copying its output line by line to the terminal and to `log`; return its exit code.

    With `progress_of`, a progress bar fed by that stage's progress.json stays under the output on the
    terminal (the log gets the output only). The stage runs in its own process group, so Ctrl-C or
    SIGTERM here stops all of its processes.
    """
    env = stage_environment()
    cmd = _dying_with_this_process(cmd)
    with open(log, "w", encoding="utf-8") as out, _ProgressFromFile(progress_of, name) as bar:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, text=True, errors="replace", bufsize=1)
        def stop_and_interrupt(*_):  # SIGTERM to `rlhf run` stops the stage like Ctrl-C does
            _stop(proc)
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, stop_and_interrupt)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                bar.write(line)
                out.write(line)
                out.flush()
            return proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)


class _ProgressFromFile:
    """A terminal progress bar that follows a stage's progress.json from a background thread; without a
    stage to follow it only passes lines through to stdout."""

    def __init__(self, dirs: StageDirs | None, name: str):
        self.dirs, self.name = dirs, name
        self._bar = self._thread = None
        self._stop = threading.Event()

    def __enter__(self) -> "_ProgressFromFile":
        if self.dirs is not None:
            self._bar = progress_bar(make_console())
            self._bar.start()
            self._thread = threading.Thread(target=self._follow, daemon=True)
            self._thread.start()
        return self

    def write(self, line: str) -> None:
        """One line of the stage's output, above the bar."""
        if self._bar is None:
            sys.stdout.write(line)
            sys.stdout.flush()
        else:
            self._bar.console.out(line.rstrip("\n"), highlight=False)

    def _follow(self) -> None:
        task = None
        started = time.time()
        while not self._stop.wait(0.5):
            record = read_progress(self.dirs)
            if not record or record.get("state") != "running" or not record.get("total") \
                    or float(record.get("started_at") or 0) < started - 5:  # a previous attempt's record
                continue
            if task is None:
                task = self._bar.add_task(self.name, total=record["total"], completed=record.get("first_step") or 0,
                                          metrics="", eta="?")
            self._bar.update(task, **bar_fields(record))

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._stop.set()
            self._thread.join()
            self._bar.stop()


def stage_environment() -> dict[str, str]:
    """The environment of a stage's processes: this package's own code first on the path and the current
    directory not at all (PYTHONSAFEPATH), so a `core/` or `stages/` folder in the directory `rlhf run` was
    started from (a received run directory, a download) is never imported."""
    own = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([own, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONSAFEPATH="1", PYTHONPATH=path)


def _dying_with_this_process(cmd: list[str]) -> list[str]:
    """`cmd` under util-linux's `setpriv --pdeathsig KILL` where it exists: the stage runs in its own session (so
    that Ctrl-C stops all of it), and would otherwise outlive an `rlhf run` killed with SIGKILL and train on
    beside a re-run. Its workers die with it in turn (stages.common.entry.die_with_launcher)."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--", *cmd] if setpriv else cmd


def _stop(proc: subprocess.Popen) -> None:
    """Ask the stage's process group to stop, then kill what is left after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
