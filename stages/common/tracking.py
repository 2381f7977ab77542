"""A stage's `tracking:` section made real: the Trainer's trackers (report_to, run name, project, and the
environment variables its callbacks read) for the Trainer kinds, accelerate's tracker objects for the loops
written here (PPO) and for the stages that train nothing (sample, rank, eval, lm_eval). tensorboard always
writes to the stage's logs/tensorboard as well. The kinds that generate log tables of their answers, each in
its tracker's own table type."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from typing import Iterator

from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker

from core.tracking import TrackingSettings
from stages.common.entry import StageContext


def tracked_names(tracking: TrackingSettings, *, stage: str, run_dir_name: str) -> tuple[str, str]:
    """(group, run name) as the tracker shows them. trackio's runs have no group: it leads the run name."""
    group, name = tracking.names(stage=stage, run_dir_name=run_dir_name)
    if tracking.backend == "trackio" and "{group}" not in tracking.run_name:
        name = f"{group}/{name}"
    return group, name


def trainer_tracking(tracking: TrackingSettings, *, stage: str, run_dir_name: str) -> dict:
    """TrainingArguments' `report_to`, `run_name` and `project`. wandb's and mlflow's callbacks read their project
    and group from the environment, so this process's environment gets them too (a stage is its own process)."""
    group, name = tracked_names(tracking, stage=stage, run_dir_name=run_dir_name)
    if tracking.backend == "wandb":
        os.environ.update(WANDB_PROJECT=tracking.project, WANDB_RUN_GROUP=group)
    elif tracking.backend == "mlflow":
        os.environ.update(MLFLOW_EXPERIMENT_NAME=tracking.project,
                          MLFLOW_TAGS=json.dumps({"group": group, "stage": stage}))
    extra = [] if tracking.backend == "tensorboard" else [tracking.backend]
    return {"report_to": ["tensorboard", *extra], "run_name": name, "project": tracking.project}


def accelerate_trackers(tracking: TrackingSettings, *, stage: str, run_dir_name: str) -> list[str | GeneralTracker]:
    """accelerate's `log_with`: tensorboard (under the accelerator's project_dir), and the tracker as an object
    carrying its project, group and run name (accelerate's own would take the project from `init_trackers`)."""
    return ["tensorboard", *tracker_objects(tracking, stage=stage, run_dir_name=run_dir_name)]


def tracker_objects(tracking: TrackingSettings, *, stage: str, run_dir_name: str) -> list[GeneralTracker]:
    """The `tracking:` backend as an accelerate tracker object, not yet started; none for tensorboard alone."""
    group, name = tracked_names(tracking, stage=stage, run_dir_name=run_dir_name)
    if tracking.backend == "wandb":
        return [WandBTracker(tracking.project, name=name, group=group)]
    if tracking.backend == "mlflow":
        return [MLflowTracker(experiment_name=tracking.project, run_name=name, tags={"group": group, "stage": stage})]
    if tracking.backend == "trackio":
        return [TrackioTracker(tracking.project, name=name)]
    return []


@contextlib.contextmanager
def stage_trackers(ctx: StageContext) -> Iterator[list[GeneralTracker]]:
    """The started trackers of a stage without an Accelerator (main process only): tensorboard under
    logs/tensorboard/<stage>, like every stage's, and the `tracking:` backend; finished on exit."""
    trackers = [TensorBoardTracker(ctx.name, ctx.dirs.logs / "tensorboard"),
                *tracker_objects(ctx.config.tracking, stage=ctx.name, run_dir_name=ctx.dirs.run_dir.name)]
    for tracker in trackers:
        tracker.start()
    try:
        yield trackers
    finally:
        for tracker in trackers:
            tracker.finish()


class AnswerTable:
    """Rows of sampled answers as a tracker shows them: named columns, cells of text or numbers."""

    def __init__(self, columns: list[str], rows: list[list]):
        self.columns = columns
        self.rows = [[round(cell, 4) if isinstance(cell, float) else cell for cell in row] for row in rows]

    def first(self, count: int) -> "AnswerTable":
        """The table's first `count` rows."""
        return AnswerTable(self.columns, self.rows[:count])

    def markdown(self) -> str:
        """The table as markdown, which tensorboard's text plugin renders (a cell's newlines shown as ⏎)."""
        def cell(value) -> str:
            return str(value).replace("|", "\\|").replace("\r", "").replace("\n", " ⏎ ")
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        return "\n".join(lines + ["| " + " | ".join(cell(value) for value in row) + " |" for row in self.rows])


def log_outcome(ctx: StageContext, metrics: dict, *, step: int, tables: dict[str, AnswerTable] | None = None) -> None:
    """A stage's numeric manifest metrics at `step` (lists, strings and None are skipped) and its tables of
    answers, into tensorboard and the `tracking:` backend. Main process only."""
    numbers = {key: value for key, value in metrics.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    with stage_trackers(ctx) as trackers:
        for tracker in trackers:
            tracker.log(numbers, step=step)
        for name, table in (tables or {}).items():
            log_table(trackers, name=name, table=table, step=step)


def log_table(trackers: list[GeneralTracker], *, name: str, table: AnswerTable, step: int) -> None:
    """`table` into each tracker in its own table type: tensorboard markdown text, wandb's and trackio's Table,
    mlflow's `log_table` (a JSON artifact per step). An empty table logs nothing."""
    if not table.rows:
        return
    for tracker in trackers:
        if isinstance(tracker, TensorBoardTracker):
            tracker.log({name: table.markdown()}, step=step)
        elif isinstance(tracker, WandBTracker):
            tracker.log_table(name, columns=table.columns, data=table.rows, step=step)
        elif isinstance(tracker, TrackioTracker):
            trackio = importlib.import_module("trackio")  # installed: `tracking_problems` checked it before launch
            tracker.log({name: trackio.Table(columns=table.columns, data=table.rows)}, step=step)
        elif isinstance(tracker, MLflowTracker):
            mlflow = importlib.import_module("mlflow")
            mlflow.log_table({column: [row[i] for row in table.rows] for i, column in enumerate(table.columns)},
                             artifact_file=f"{name}/step-{step:06d}.json")
