"""A new stage kind in the project's shape: a folder with config.py, stage.py and __main__.py, and one registry
entry. The trivial `noop` kind below, sketched in a few minutes, runs through the real orchestrator and the
real `accelerate launch`: planned, launched, committed with a manifest, cached, shown in `rlhf status` and
the report, and re-run when its config changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import REPO, pretrain_stage, small_corpus, write_pipeline

pytestmark = pytest.mark.slow

CONFIG = '''
from typing import Literal

from core.schema import StageConfig


class NoopStage(StageConfig):
    """Writes its message (after its input's artifact files, listed) into the artifact."""

    kind: Literal["noop"]
    message: str = "hello"

    module = "noop_kind"
    input_roles = {"source": False}
    headline = ("noop/characters",)
'''

STAGE = '''
from accelerate import PartialState


def train(ctx):
    """The whole stage: read the inputs, write the artifact, return the metrics."""
    listed = sorted(p.name for p in ctx.inputs["source"].iterdir()) if "source" in ctx.inputs else []
    ctx.progress.start(1, 0)
    if PartialState().is_main_process:
        ctx.staged_artifact.mkdir(parents=True)
        (ctx.staged_artifact / "message.txt").write_text("\\n".join(listed + [ctx.config.message]))
    ctx.progress.update(1)
    return {"noop/characters": len(ctx.config.message)}
'''

MAIN = '''
from noop_kind.config import NoopStage
from noop_kind.stage import train
from stages.common.entry import run_stage

run_stage(train, NoopStage)
'''

# the registry line, added in the orchestrator's process (the shipped registry stays as it is)
RLHF = '''
import sys

from noop_kind.config import NoopStage
from pipeline.cli import main
from pipeline.registry import KINDS

KINDS["noop"] = NoopStage
sys.exit(main(sys.argv[1:]))
'''


def noop_kind(directory: Path) -> dict:
    """The kind's folder under `directory`; the environment that puts it on the import path."""
    package = directory / "noop_kind"
    package.mkdir()
    for name, text in (("__init__.py", ""), ("config.py", CONFIG), ("stage.py", STAGE), ("__main__.py", MAIN)):
        (package / name).write_text(text)
    (directory / "rlhf_with_noop.py").write_text(RLHF)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(directory), str(REPO)]))


def run(directory: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(directory / "rlhf_with_noop.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_a_noop_kind_runs_through_the_orchestrator_and_the_launcher(tmp_path):
    env = noop_kind(tmp_path)
    corpus = small_corpus(tmp_path, paragraphs=60)
    stages = {"pre": pretrain_stage(corpus, max_steps=2, save_every=10),
              "hello": {"kind": "noop", "inputs": {"source": "pre"}, "message": "hello"}}
    path = write_pipeline(tmp_path / "p.yaml", stages)

    first = run(tmp_path, env, "run", str(path))
    assert first.returncode == 0, first.stdout + first.stderr
    manifest = read_manifest(StageDirs(tmp_path / "run" / "hello"))
    assert manifest["kind"] == "noop" and manifest["metrics"]["noop/characters"] == 5
    assert manifest["metrics"]["resources/peak_memory_gb"] > 0  # every stage records its peak
    assert manifest["inputs"]["source"]["stage"] == "pre"
    written = (tmp_path / "run" / "hello" / "artifact" / "message.txt").read_text().splitlines()
    assert "config.json" in written and written[-1] == "hello"

    cached = run(tmp_path, env, "run", str(path))
    assert cached.returncode == 0 and "nothing to run" in cached.stdout
    status = run(tmp_path, env, "status", str(path))
    assert "noop/characters 5" in status.stdout

    stages["hello"]["message"] = "hello again"
    write_pipeline(path, stages)
    plan = run(tmp_path, env, "plan", str(path))
    assert "config changed: message" in plan.stdout
    changed = run(tmp_path, env, "run", str(path))
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert read_manifest(StageDirs(tmp_path / "run" / "hello"))["metrics"]["noop/characters"] == 11
    assert json.loads((tmp_path / "run" / "report" / "report.json").read_text())["stages"]["hello"]["state"] == "fresh"
