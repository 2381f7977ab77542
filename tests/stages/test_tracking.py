"""`tracking:` through a real tracker, offline: wandb (WANDB_MODE=offline) gets one run per stage, named for the
stage, in the run directory's group and the file's project, from a Trainer stage and from accelerate's trackers
as PPO builds them; tensorboard keeps writing beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate import Accelerator

from core.tracking import TrackingSettings
from stages.common.tracking import accelerate_trackers
from tests.helpers import pretrain_stage, rlhf, write_pipeline

wandb = pytest.importorskip("wandb", reason="pip install wandb")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """wandb logging to files under a temp dir, no account, no network."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path / "wandb"


def offline_runs(directory: Path) -> list[bytes]:
    """The records of each offline run wandb wrote (its .wandb file: protobuf, with the names as plain bytes)."""
    return [run.read_bytes() for run in sorted(directory.glob("offline-run-*/run-*.wandb"))]


def run_record(*, project: str, group: str, name: str) -> list[bytes]:
    """The fields of wandb's RunRecord as protobuf encodes them (project = 3, run_group = 6, display_name = 8;
    wandb_internal.proto): a group or name found elsewhere, e.g. inside a path in the config, does not match."""
    return [bytes([tag, len(value)]) + value.encode() for tag, value in ((0x1A, project), (0x32, group), (0x42, name))]


@pytest.mark.slow
def test_a_trainer_stage_logs_one_wandb_run_named_for_it_in_the_run_directorys_group(tmp_path, corpus, offline_wandb):
    stages = {"tracked-pre": pretrain_stage(corpus, max_steps=4, save_every=100, log_every=2)}
    path = write_pipeline(tmp_path / "p.yaml", stages, run_dir="my-run", tracking={"backend": "wandb", "project": "demo"})
    result = rlhf("run", path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = offline_runs(offline_wandb)
    assert len(runs) == 1
    assert all(field in runs[0] for field in run_record(project="demo", group="my-run", name="tracked-pre"))
    assert b"train/loss" in runs[0]
    assert list((tmp_path / "my-run" / "tracked-pre" / "logs" / "tensorboard").rglob("events.out.tfevents.*"))


def test_ppos_accelerate_trackers_log_to_wandb_under_the_stage_name_and_group(tmp_path, offline_wandb):
    tracking = TrackingSettings(backend="wandb", project="demo", group="sweep-3", run_name="{group}-{stage}")
    accelerator = Accelerator(cpu=True, log_with=accelerate_trackers(tracking, stage="ppo", run_dir_name="unused"),
                              project_dir=str(tmp_path / "logs"))
    accelerator.init_trackers("tensorboard", config={"stage": "ppo"})
    accelerator.log({"score/mean": 0.5, "kl/mean": 1.0}, step=1)
    for tracker in accelerator.trackers:
        tracker.finish()
    runs = offline_runs(offline_wandb)
    assert len(runs) == 1
    assert all(field in runs[0] for field in run_record(project="demo", group="sweep-3", name="sweep-3-ppo"))
    assert b"score/mean" in runs[0]
    assert list((tmp_path / "logs" / "tensorboard").rglob("events.out.tfevents.*"))
