"""A stage's progress: `progress.json` for `rlhf status` and `rlhf run`, and a bar when run on a terminal.

Only the main process reports. The log files get the stage's periodic log lines, never the bar: the bar is
drawn only when stdout is a terminal (a stage launched by hand), and `rlhf run` draws its own from
progress.json while it copies the stage's output into the log.
"""

from __future__ import annotations

import sys
import time

from pipeline.artifacts import StageDirs
from pipeline.progress import bar_fields, new_attempt, progress_bar, write_progress

#: seconds between two writes of progress.json while training
WRITE_EVERY_S = 1.0


class StageProgress:
    """The latest attempt of one stage: started, training at step N of M, failed, or done."""

    def __init__(self, dirs: StageDirs, name: str, fingerprint: str, is_main: bool):
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
