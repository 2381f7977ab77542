"""A stage's `tracking:` section made real: the Trainer's trackers (report_to, run name, project, and the
environment variables its callbacks read) for the Trainer kinds, accelerate's tracker objects for the loops
written here (PPO). tensorboard always writes to the stage's logs/tensorboard as well."""

from __future__ import annotations

import json
import os

from accelerate.tracking import GeneralTracker, MLflowTracker, TrackioTracker, WandBTracker

from core.tracking import TrackingSettings


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
    group, name = tracked_names(tracking, stage=stage, run_dir_name=run_dir_name)
    if tracking.backend == "wandb":
        return ["tensorboard", WandBTracker(tracking.project, name=name, group=group)]
    if tracking.backend == "mlflow":
        return ["tensorboard", MLflowTracker(experiment_name=tracking.project, run_name=name,
                                             tags={"group": group, "stage": stage})]
    if tracking.backend == "trackio":
        return ["tensorboard", TrackioTracker(tracking.project, name=name)]
    return ["tensorboard"]
