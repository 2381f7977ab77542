"""`RUN_DIR/<stage>/progress.json`: what the stage's latest attempt is doing, for `rlhf status` and the runner.

Written by the stage's main process through StageProgress (running with step, total, ETA and last metrics;
failed with the error; done at commit) and by the runner when a stage process exits non-zero. A record that
says "running" but whose process is gone means the attempt was killed: `rlhf status` shows it as
interrupted. The log files get the stage's periodic log lines, never a bar: a stage draws one only when
stdout is a terminal (launched by hand), and `rlhf run` draws its own from progress.json.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core.layout import StageDirs

#: a running record from another host counts as alive while it was updated this recently
REMOTE_ALIVE_S = 300


def write_progress(dirs: StageDirs, record: dict) -> None:
    """Replace the record atomically (no fsync: it is rewritten every second or so while training)."""
    path = dirs.progress
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(dict(record, updated_at=round(time.time(), 3))) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_progress(dirs: StageDirs) -> dict | None:
    """The record, or None when there is none or it cannot be read."""
    try:
        record = json.loads(dirs.progress.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def new_attempt(fingerprint: str, pid: int | None = None) -> dict:
    """The record of an attempt that has just started on this host."""
    return {"state": "running", "fingerprint": fingerprint, "pid": pid or os.getpid(), "host": socket.gethostname(),
            "started_at": round(time.time(), 3), "step": None, "total": None, "metrics": {}}


def is_alive(record: dict) -> bool:
    """Whether the process that wrote a running record still runs (by pid on this host, else by recency)."""
    if record.get("host") != socket.gethostname():
        return time.time() - float(record.get("updated_at", 0)) < REMOTE_ALIVE_S
    try:
        os.kill(int(record["pid"]), 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def format_duration(seconds: float | None) -> str:
    """'42s', '3m05s', '2h07m'; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def shown_metrics(metrics: dict) -> str:
    """'loss 5.12  eval_loss 5.31' from a record's metrics."""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (metrics or {}).items())


def eta_seconds(record: dict) -> float | None:
    """Seconds left at the pace of this attempt's training so far (None before the first step)."""
    step, total, first, since = (record.get(k) for k in ("step", "total", "first_step", "training_since"))
    if None in (step, total, first, since) or step <= first:
        return None
    return (float(record.get("updated_at", time.time())) - since) / (step - first) * (total - step)


def bar_fields(record: dict) -> dict:
    """What a progress bar shows of a progress record: steps done, latest metrics, ETA."""
    return {"completed": record.get("step") or 0, "metrics": shown_metrics(record.get("metrics")),
            "eta": format_duration(eta_seconds(record))}


def progress_bar(console=None):
    """The rich progress bar that both a stage on a terminal and `rlhf run` draw: steps, metrics, ETA."""
    # the ETA is ours (pace of this attempt's training since it started), not rich's short-window estimate
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
                    console=console, transient=True, refresh_per_second=4)


#: seconds between two writes of progress.json while training
WRITE_EVERY_S = 1.0


class StageProgress:
    """The latest attempt of one stage: started, training at step N of M, failed, or done."""

    def __init__(self, dirs: StageDirs, name: str, fingerprint: str, *, is_main: bool):
        self.dirs, self.name, self.is_main = dirs, name, is_main
        self.record = new_attempt(fingerprint)
        self._written = 0.0
        self._bar = self._task = None
        if is_main:
            write_progress(dirs, self.record)

    def start(self, total: int, first_step: int) -> None:
        """Training begins (or resumes) at `first_step` of `total`."""
        if not self.is_main:
            return
        self.record.update(total=total, first_step=first_step, step=first_step, training_since=round(time.time(), 3))
        write_progress(self.dirs, self.record)
        self._written = time.monotonic()
        if sys.stdout.isatty() and self._bar is None:
            self._bar = progress_bar()
            self._task = self._bar.add_task(self.name, total=total, completed=first_step, metrics="", eta="?")
            self._bar.start()

    def update(self, step: int, metrics: dict | None = None) -> None:
        """After an optimizer step (and with the latest logged metrics, when there are new ones)."""
        if not self.is_main:
            return
        self.record["step"] = step
        if metrics:
            self.record["metrics"] = dict(self.record.get("metrics") or {}, **metrics)
        now = time.monotonic()
        if now - self._written >= WRITE_EVERY_S or step == self.record.get("total"):
            write_progress(self.dirs, self.record)
            self._written = now
        if self._bar is not None:
            self._bar.update(self._task, **bar_fields(dict(self.record, updated_at=time.time())))

    def close(self) -> None:
        """Remove the bar (training is over; the log lines stay)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def finish(self, state: str, error: str | None = None) -> None:
        """The attempt ended: "done" (artifact committed), "failed" (with the error) or "interrupted"."""
        self.close()
        if not self.is_main:
            return
        self.record.update(state=state, ended_at=round(time.time(), 3))
        if error:
            self.record["error"] = error
        write_progress(self.dirs, self.record)
