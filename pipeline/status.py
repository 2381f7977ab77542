"""`rlhf status`: each stage's state, what it is doing or why, its latest metrics and its elapsed time.

States: fresh, stale, missing and conflict come from the plan (files on disk vs the pipeline file);
running, failed and interrupted come from the stage's progress.json (pipeline/progress.py) on top of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from rich.console import Group
from rich.live import Live
from rich.table import Table

from core.history import read_history
from core.lock import RunLock
from core.progress import eta_seconds, format_duration, is_alive, read_progress, shown_metrics
from pipeline.config import Pipeline
from pipeline.plan import StageState, stage_states

STATE_STYLE = {"fresh": "green", "stale": "yellow", "missing": "yellow", "running": "bold blue", "awaiting": "magenta",
               "interrupted": "cyan", "failed": "bold red", "conflict": "red"}


@dataclass
class StatusRow:
    """One row of `rlhf status`."""

    name: str
    kind: str
    state: str  # fresh, stale, missing, conflict, running, failed, "interrupted at step N"
    detail: str
    metrics: dict
    elapsed_s: float | None

    @property
    def style(self) -> str:
        return STATE_STYLE.get(self.state.split()[0], "white")


def status_row(pipeline: Pipeline, status: StageState) -> StatusRow:
    """The row of one stage: its plan state, refined by what its latest attempt recorded."""
    stage = pipeline.stages[status.name]
    progress = read_progress(status.dirs)
    mine = progress is not None and progress.get("fingerprint") == status.fingerprint
    view = StatusRow(status.name, status.kind, status.state, status.reason, {}, None)
    if status.state == "interrupted":
        view.state = f"interrupted at step {status.resume_step}"
        view.detail = "resumes from its checkpoint"
    if status.state != "fresh":
        why = stage.awaiting(pipeline.run_dir, status.name)
        if why is not None:  # "awaiting labels 37/200"
            view.state, view.detail = why, f"people rank the answers: rlhf label {pipeline.run_dir}"

    if mine and progress.get("state") == "running" and is_alive(progress):
        view.state = "running"
        step, total = progress.get("step"), progress.get("total")
        view.detail = (f"step {step}/{total}, eta {format_duration(eta_seconds(progress))}" if total
                       else "starting: loading data and models")
        view.metrics = dict(progress.get("metrics") or {})
        view.elapsed_s = time.time() - float(progress["started_at"])
        return view
    if status.state == "fresh":
        metrics = (status.manifest or {}).get("metrics") or {}
        view.metrics = {k: metrics[k] for k in type(stage).headline if metrics.get(k) is not None}
        view.elapsed_s = (status.manifest or {}).get("wall_time_s")
        resumed = (status.manifest or {}).get("resumed_from_step")
        view.detail = "up to date" + (f" (resumed from step {resumed})" if resumed else "")
        return view
    if mine and progress.get("state") in ("running", "failed", "interrupted"):
        view.metrics = _last_live(status, type(stage).live)
        ended, started = progress.get("ended_at") or progress.get("updated_at"), progress.get("started_at")
        view.elapsed_s = float(ended) - float(started) if ended and started else None
        after = (f"resumes from step {status.resume_step}" if status.resume_step is not None
                 else "restarts from step 0 (no checkpoint yet)")
        if progress["state"] == "failed":
            view.state = "failed"
            view.detail = f"{progress.get('error', 'the stage process failed')}; {after}"
            if progress.get("log"):
                view.detail += f"; log: {progress['log']}"
        elif status.resume_step is None:  # killed before its first checkpoint
            view.state = "interrupted"
            view.detail = f"stopped at step {progress.get('step') or 0}; {after}"
    return view


def _last_live(status: StageState, keys: tuple[str, ...]) -> dict:
    """The latest logged value of each of `keys` in the stage's metrics.jsonl."""
    found: dict = {}
    for record in reversed(read_history(status.dirs.logs / "metrics.jsonl")):
        for key in keys:
            if key not in found and isinstance(record.get(key), (int, float)):
                found[key] = record[key]
        if len(found) == len(keys):
            break
    return {k: found[k] for k in keys if k in found}


def status_rows(pipeline: Pipeline) -> list[StatusRow]:
    """Every stage's row, in topological order."""
    return [status_row(pipeline, status) for status in stage_states(pipeline).values()]


def rows_table(views: list[StatusRow]) -> Table:
    """The rich table of `rlhf status`."""
    table = Table(show_edge=False, pad_edge=False)
    for column in ("stage", "kind", "state"):
        table.add_column(column, no_wrap=True)
    table.add_column("metrics")
    table.add_column("elapsed", justify="right", no_wrap=True)
    table.add_column("details", overflow="fold")
    for v in views:
        table.add_row(v.name, v.kind, f"[{v.style}]{v.state}[/]", shown_metrics(v.metrics),
                      format_duration(v.elapsed_s) if v.elapsed_s is not None else "", v.detail)
    return table


def show_status(pipeline: Pipeline, console, watch: float | None = None) -> None:
    """Print the table once; with `watch` (seconds), redraw it in place until no stage is running."""
    header = f"run directory: {pipeline.run_dir}  (pipeline: {pipeline.path})"
    if not watch:
        console.print(header)
        console.print(rows_table(status_rows(pipeline)))
        return
    def frame() -> tuple[Group, bool]:
        views = status_rows(pipeline)
        running = RunLock.is_held(pipeline.run_dir) or any(v.state == "running" for v in views)
        footer = f"refreshing every {watch:g}s (Ctrl-C to stop)" if running else "no run is going"
        return Group(header, rows_table(views), f"{datetime.now():%H:%M:%S}  {footer}"), running

    with Live(frame()[0], console=console, auto_refresh=False) as live:
        while True:
            content, running = frame()
            live.update(content, refresh=True)
            if not running:
                break
            time.sleep(watch)
