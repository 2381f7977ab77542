"""Where a stage's metrics go besides tensorboard: the `tracking:` section (the pipeline file's, under each
stage's own), and what can be known before launch about whether that tracker will work."""

from __future__ import annotations

import importlib.util
import netrc
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: where wandb keeps its key after `wandb login`
WANDB_HOST = "api.wandb.ai"
#: wandb's modes that log without an account
WANDB_LOCAL_MODES = ("offline", "disabled", "dryrun")


class TrackingSettings(BaseModel):
    """An experiment tracker for every stage: one run per stage, the stages of one run directory in one group.
    tensorboard always writes to the stage's logs/tensorboard as well."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    backend: Literal["tensorboard", "wandb", "trackio", "mlflow"] = Field(
        "tensorboard", description="tensorboard alone, or also wandb (WANDB_MODE=offline logs locally), trackio "
                                   "or mlflow (MLFLOW_TRACKING_URI; mlflow's default is sqlite:///mlflow.db in the "
                                   "working directory)")
    project: str = Field("rlhf-pipeline", min_length=1,
                         description="wandb/trackio project, mlflow experiment")
    group: str | None = Field(None, min_length=1, description="the run group (wandb group, mlflow tag `group`, "
                                                              "trackio run-name prefix); default: the run directory's name")
    run_name: str = Field("{stage}", min_length=1,
                          description="each stage's run name; {stage} and {group} are filled in")
    table_rows: int = Field(8, ge=0, description="answers in each table of sampled answers that the kinds which "
                                                 "generate log (sample, rank, eval, ppo's held-out points; grpo and "
                                                 "rloo through TRL, to wandb and trackio); 0 logs none")

    def names(self, *, stage: str, run_dir_name: str) -> tuple[str, str]:
        """(group, run name) of stage `stage` of the run directory named `run_dir_name`."""
        group = self.group or run_dir_name
        return group, self.run_name.format(stage=stage, group=group)

    def problems(self) -> list[tuple[tuple, str]]:
        """What would make the tracker fail at launch, as far as can be told offline: not installed; wandb
        without a key (WANDB_API_KEY, or `wandb login`'s ~/.netrc entry) and not in a local mode."""
        if "{" in self.run_name.replace("{stage}", "").replace("{group}", ""):
            return [(("run_name",), "only {stage} and {group} are filled in")]
        if self.backend == "tensorboard":
            return []
        if importlib.util.find_spec(self.backend) is None:  # found, not imported: plan stays light
            return [(("backend",), f"{self.backend} is not installed (pip install {self.backend}), or use tensorboard")]
        if self.backend == "mlflow" and not mlflow_has_a_store():
            return [(("backend",), "mlflow's default store (sqlite:///mlflow.db) needs SQLAlchemy, which mlflow-skinny "
                                   "lacks: pip install mlflow, or set MLFLOW_TRACKING_URI to a tracking server")]
        if self.backend == "wandb" and not wandb_can_log():
            return [(("backend",), "wandb is not logged in: run `wandb login`, set WANDB_API_KEY, or set "
                                   "WANDB_MODE=offline to log locally (`wandb sync` later)")]
        return []


def wandb_can_log() -> bool:
    """Whether wandb has a key or a local mode, read from the environment and ~/.netrc (offline, no import)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in WANDB_LOCAL_MODES:
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def mlflow_has_a_store() -> bool:
    """Whether mlflow can open its store: MLFLOW_TRACKING_URI names one, or SQLAlchemy is there for the default."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) or importlib.util.find_spec("sqlalchemy") is not None
