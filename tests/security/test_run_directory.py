"""A run directory someone else wrote, or one that is not a run directory at all: nothing rlhf does deletes
outside it, follows a symlink out of it, or acts on another directory than the one it was given."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from core.layout import RUN_RECORD
from tests.helpers import pretrain_stage, rlhf, small_corpus, write_pipeline


def _tree(path: Path) -> list[str]:
    """Every path under `path` (a snapshot to compare before and after)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _precious(directory: Path) -> Path:
    """A folder outside the run that a symlink in it points to: a checkpoint-like torn step and a file."""
    (directory / "step-000003").mkdir(parents=True)
    (directory / "step-000003" / "notes.txt").write_text("not rlhf's\n")
    (directory / "keep.txt").write_text("mine\n")
    return directory


def _recorded_run(tmp_path: Path) -> tuple[Path, Path]:
    """A pipeline file and its run directory with the record `rlhf run` leaves (no stage has run)."""
    config = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(small_corpus(tmp_path), max_steps=1)})
    run = tmp_path / "run"
    (run / "pre").mkdir(parents=True)
    (run / RUN_RECORD).write_text(json.dumps({"pipeline": str(config), "overrides": []}))
    return config, run


def test_run_refuses_a_symlinked_checkpoints_folder_and_deletes_nothing_through_it(tmp_path):
    config, run = _recorded_run(tmp_path)
    outside = _precious(tmp_path / "outside")
    before = _tree(outside)
    (run / "pre" / "checkpoints").symlink_to(outside, target_is_directory=True)
    result = rlhf("run", config)
    assert result.returncode != 0
    assert "checkpoints: a symlink" in result.stdout + result.stderr
    assert _tree(outside) == before


def test_clean_deletes_only_what_rlhf_named_and_never_through_a_symlink(tmp_path):
    _, run = _recorded_run(tmp_path)
    checkpoints = run / "pre" / "checkpoints"
    (checkpoints / "step-000002").mkdir(parents=True)            # torn (no marker): rlhf's, removed
    (checkpoints / "my-analysis").mkdir()                         # not a name rlhf writes: kept
    outside = _precious(tmp_path / "outside")
    before = _tree(outside)
    (run / "pre" / "artifact.staging").symlink_to(outside, target_is_directory=True)   # the link goes, not its target
    result = rlhf("clean", run, "--keep-artifacts")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"run directory: {run.resolve()}" in result.stdout
    assert not (checkpoints / "step-000002").exists() and (checkpoints / "my-analysis").is_dir()
    assert not (run / "pre" / "artifact.staging").is_symlink()
    assert _tree(outside) == before

    shutil.rmtree(checkpoints)
    checkpoints.symlink_to(outside, target_is_directory=True)
    refused = rlhf("clean", run, "--keep-artifacts")
    assert refused.returncode == 2 and "a symlink; refusing to delete" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert _tree(outside) == before


def test_commands_given_a_copy_of_a_run_directory_act_on_the_copy(tmp_path):
    _, run = _recorded_run(tmp_path)
    (run / "pre" / "checkpoints" / "step-000004").mkdir(parents=True)
    copy = tmp_path / "backup"
    shutil.copytree(run, copy)
    result = rlhf("clean", copy, "--keep-artifacts")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"run directory: {copy.resolve()}" in result.stdout
    assert not (copy / "pre" / "checkpoints" / "step-000004").exists()
    assert (run / "pre" / "checkpoints" / "step-000004").is_dir()
    status = rlhf("status", copy)
    assert str(copy.resolve()) in status.stdout and str(run.resolve()) + " " not in status.stdout


def test_plan_refuses_the_root_the_home_folder_and_a_folder_of_other_files_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("\\begin{document}\n")
    stages = {"pre": pretrain_stage(small_corpus(tmp_path), max_steps=1)}
    for run_dir, expected in (("/", "is the filesystem root"), (str(home), "is the home directory"),
                              ("mine", "holds files rlhf did not write (thesis.tex)")):
        config = write_pipeline(tmp_path / "p.yaml", stages, run_dir=run_dir)
        before = {p: _tree(p) for p in (home, tmp_path / "mine")}
        root_cache = Path("/.cache/file-hashes.json").exists()
        result = subprocess.run([sys.executable, "-m", "pipeline.cli", "plan", str(config)], capture_output=True,
                                text=True, env=dict(os.environ, HOME=str(home)), timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{config}:1: run_dir: " in result.stderr and expected in result.stderr, result.stderr
        assert {p: _tree(p) for p in before} == before
        assert Path("/.cache/file-hashes.json").exists() == root_cache
