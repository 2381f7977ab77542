"""`tracking:` through a real tracker, offline: wandb (WANDB_MODE=offline) gets one run per stage, named for the
stage, in the run directory's group and the file's project, from a Trainer stage and from accelerate's trackers
as PPO builds them; tensorboard keeps writing beside it. Tables of answers reach wandb and trackio (local) as
their own table types."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from accelerate import Accelerator, PartialState

from core.tracking import TrackingSettings
from stages.common.tracking import AnswerTable, accelerate_trackers, log_table, tracker_objects
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


ANSWERS = AnswerTable(["prompt", "answer", "score"], [["Name a colour.", "Blue | or red\nmaybe", 0.5], ["Hi?", "Hello.", -1.25]])


def test_an_answer_table_reaches_wandb_as_a_wandb_table(offline_wandb):
    PartialState(cpu=True)
    [tracker] = tracker_objects(TrackingSettings(backend="wandb"), stage="samples", run_dir_name="run")
    tracker.start()
    log_table([tracker], name="samples", table=ANSWERS, step=3)
    # the run's own folder: wandb keeps the WANDB_DIR of the first run in a process for every later one
    files = Path(tracker.run.dir)
    tracker.finish()
    [table_file] = files.glob("media/table/samples_*.table.json")
    logged = json.loads(table_file.read_text())
    assert logged["columns"] == ANSWERS.columns and logged["data"] == ANSWERS.rows


def test_an_answer_table_reaches_trackio_as_a_trackio_table(tmp_path):
    pytest.importorskip("trackio", reason="pip install trackio")
    script = textwrap.dedent(f"""
        from accelerate import PartialState
        from core.tracking import TrackingSettings
        from stages.common.tracking import AnswerTable, log_table, tracker_objects
        PartialState(cpu=True)
        [tracker] = tracker_objects(TrackingSettings(backend="trackio", project="demo"), stage="samples",
                                    run_dir_name="run")
        tracker.start()
        log_table([tracker], name="samples", table=AnswerTable({ANSWERS.columns!r}, {ANSWERS.rows!r}), step=3)
        tracker.finish()
    """)
    # trackio reads TRACKIO_DIR when imported, so a process of its own
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRACKIO_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    with sqlite3.connect(tmp_path / "demo.db") as db:
        logged = [json.loads(metrics) for run, step, metrics in db.execute("select run_name, step, metrics from metrics")
                  if run == "run/samples" and step == 3]
    tables = [entry["samples"] for entry in logged if "samples" in entry]
    assert tables == [{"_type": "trackio.table", "_value": [dict(zip(ANSWERS.columns, row)) for row in ANSWERS.rows]}]


def test_an_answer_tables_markdown_keeps_one_table_row_per_answer():
    lines = ANSWERS.markdown().splitlines()
    assert lines[0] == "| prompt | answer | score |" and len(lines) == 2 + len(ANSWERS.rows)
    assert lines[2] == "| Name a colour. | Blue \\| or red ⏎ maybe | 0.5 |"


def test_an_answer_table_reaches_mlflow_as_a_logged_table(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the store with no server and no SQLAlchemy
    PartialState(cpu=True)
    [tracker] = tracker_objects(TrackingSettings(backend="mlflow", project="demo"), stage="samples", run_dir_name="run")
    tracker.start()
    log_table([tracker], name="samples", table=ANSWERS, step=3)
    tracker.finish()
    [table_file] = (tmp_path / "mlruns").rglob("artifacts/samples/step-000003.json")
    assert json.loads(table_file.read_text()) == {"columns": ANSWERS.columns, "data": ANSWERS.rows}
