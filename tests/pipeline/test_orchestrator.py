"""Fast orchestrator tests (no training): DAG order, fingerprints, plan states, checkpoints, manifests, lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.checkpoints import CHECKPOINT_MARKER, checkpoint_dir, complete_checkpoints, resume_point
from core.errors import InputError
from core.hashing import FileHasher
from core.layout import StageDirs
from core.lock import RunLock
from core.manifest import commit_artifact, read_manifest
from pipeline import dag
from pipeline.config import load_pipeline
from pipeline.plan import make_plan, stage_states
from tests.helpers import REPO, pretrain_stage, rlhf, small_corpus, write_pipeline


def three_stages(corpus: Path) -> dict:
    """a -> b -> c by `inputs.model` (continued pretraining), listed out of order."""
    def continued(source):
        stage = pretrain_stage(corpus)
        stage["model"], stage["inputs"] = {}, {"model": source}
        return stage
    return {"c": continued("b"), "a": pretrain_stage(corpus), "b": continued("a")}


def test_topological_order_and_downstream(tmp_path, corpus):
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", three_stages(corpus)))
    assert dag.topological_order(pipeline.stages) == ["a", "b", "c"]
    assert dag.downstream(pipeline.stages, ["b"]) == {"b", "c"}
    assert dag.find_cycle(pipeline.stages) is None


def fingerprints(tmp_path: Path, stages: dict) -> dict[str, str]:
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", stages))
    return {name: s.fingerprint for name, s in stage_states(pipeline, FileHasher()).items()}


def test_fingerprint_changes_exactly_with_semantic_inputs(tmp_path, corpus):
    stages = three_stages(corpus)
    base = fingerprints(tmp_path, stages)
    assert len(set(base.values())) == 3

    # logging-only and launch keys change nothing
    stages["a"]["train"].update(log_every=3, save_every=7, keep_last=5, eval_every=9)
    stages["a"]["launch"] = {"num_processes": 2}
    assert fingerprints(tmp_path, stages) == base

    # an unset optional setting is left out: adding one to a kind does not invalidate existing runs, and
    # setting it explicitly to its default of None is the same as leaving it out
    from core.fingerprint import semantic_config
    from stages.pretrain.config import PretrainStage

    section = semantic_config(PretrainStage.model_validate(stages["a"]))
    assert "hub" not in section["model"] and "gguf" not in section["model"] and "init" in section["model"]
    stages["a"]["model"]["hub"] = None
    assert fingerprints(tmp_path, stages) == base

    # the same bytes under another name change nothing
    moved = small_corpus(tmp_path, name="renamed.txt")
    stages["a"]["data"]["train"] = [str(moved)]
    assert fingerprints(tmp_path, stages) == base

    # a config value of b changes b and, through b's fingerprint, c; never a
    stages["b"]["train"]["learning_rate"] = 1e-3
    changed = fingerprints(tmp_path, stages)
    assert changed["a"] == base["a"] and changed["b"] != base["b"] and changed["c"] != base["c"]

    # the data content of a changes all three
    moved.write_text(moved.read_text() + "\n\nOne more paragraph.\n")
    edited = fingerprints(tmp_path, stages)
    assert all(edited[n] != changed[n] for n in "abc")


def fake_checkpoint(dirs: StageDirs, step: int, fingerprint: str, *, complete: bool = True) -> Path:
    path = checkpoint_dir(dirs, step)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * 10)
    if complete:
        (path / CHECKPOINT_MARKER).write_text(json.dumps({"fingerprint": fingerprint, "step": step}))
    return path


def test_resume_point_ignores_torn_checkpoints_and_sorts_owners(tmp_path):
    dirs = StageDirs(tmp_path / "stage")
    fake_checkpoint(dirs, 10, "new")
    fake_checkpoint(dirs, 20, "new")
    fake_checkpoint(dirs, 30, "new", complete=False)  # torn: being written when the process died
    (dirs.checkpoints / "checkpoint-40").mkdir()  # the library's own in-progress name
    assert [c.step for c in complete_checkpoints(dirs)] == [10, 20]
    assert resume_point(dirs, "new").resume.step == 20
    other = resume_point(dirs, "newer")
    assert other.resume is None and other.conflict.step == 20 and other.leftovers == []

    # once a manifest says "old" finished, checkpoints of "old" are leftovers, not a conflict
    dirs.manifest.write_text(json.dumps({"schema_version": 1, "fingerprint": "new", "outputs": []}))
    leftover = resume_point(dirs, "newer")
    assert leftover.conflict is None and [c.step for c in leftover.leftovers] == [10, 20]


def test_commit_artifact_replaces_atomically_and_lists_outputs(tmp_path):
    dirs = StageDirs(tmp_path / "stage")
    for version in ("one", "two"):
        staged = dirs.root / "artifact.staging"
        staged.mkdir(parents=True)
        (staged / "weights.bin").write_text(version)
        commit_artifact(dirs, staged, {"schema_version": 1, "fingerprint": version})
        manifest = read_manifest(dirs)
        assert manifest["fingerprint"] == version
        assert manifest["outputs"] == [{"path": "artifact/weights.bin", "size": 3,
                                        "mtime_ns": (dirs.artifact / "weights.bin").stat().st_mtime_ns,
                                        "sha256": manifest["outputs"][0]["sha256"]}]
        assert (dirs.artifact / "weights.bin").read_text() == version
    assert sorted(p.name for p in dirs.root.iterdir()) == ["artifact", "manifest.json"]


def test_plan_states_from_files_on_disk(tmp_path, corpus):
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", three_stages(corpus)))
    statuses = stage_states(pipeline)
    assert {s.state for s in statuses.values()} == {"missing"}

    # a: interrupted (checkpoint of its own fingerprint); b: a conflicting checkpoint
    a, b = statuses["a"], statuses["b"]
    fake_checkpoint(a.dirs, 10, a.fingerprint)
    fake_checkpoint(b.dirs, 10, "another config")
    statuses = stage_states(pipeline)
    assert statuses["a"].state == "interrupted" and statuses["a"].resume_step == 10
    assert statuses["b"].state == "conflict" and "--restart b" in statuses["b"].reason
    with pytest.raises(InputError, match="stage b: interrupted at step 10 under a different config"):
        make_plan(pipeline)
    assert make_plan(pipeline, restart=["b"]).to_run == ["a", "b", "c"]

    # a manifest for a with matching outputs makes it fresh; a changed output makes it stale
    staged = a.dirs.root / "artifact.staging"
    staged.mkdir()
    (staged / "w").write_text("w")
    commit_artifact(a.dirs, staged, {"schema_version": 1, "fingerprint": a.fingerprint,
                                     "fingerprint_payload": a.payload, "artifact": "artifact"})
    shutil.rmtree(a.dirs.checkpoints)
    assert stage_states(pipeline)["a"].state == "fresh"
    (a.dirs.artifact / "w").write_text("changed")
    assert stage_states(pipeline)["a"].reason == "outputs changed: artifact/w changed size"

    # --only c with its inputs not fresh is refused with the reason
    (a.dirs.artifact / "w").write_text("w")
    with pytest.raises(InputError, match="stage c needs b \\(input model\\), which is conflict"):
        make_plan(pipeline, only=["c"])
    with pytest.raises(InputError, match="--only ghost: no such stage"):
        make_plan(pipeline, only=["ghost"])
    plan = make_plan(pipeline, start="b", restart=["b"])
    assert plan.to_run == ["b", "c"] and plan.skipped == {"a": "fresh"}


def test_stale_reason_names_the_changed_key(tmp_path, corpus):
    stages = {"a": pretrain_stage(corpus)}
    path = write_pipeline(tmp_path / "p.yaml", stages)
    a = stage_states(load_pipeline(path))["a"]
    staged = a.dirs.root / "artifact.staging"
    staged.mkdir(parents=True)
    commit_artifact(a.dirs, staged, {"schema_version": 1, "fingerprint": a.fingerprint,
                                     "fingerprint_payload": a.payload, "artifact": "artifact"})
    stages["a"]["train"]["learning_rate"] = 0.01
    write_pipeline(path, stages)
    assert stage_states(load_pipeline(path))["a"].reason == "config changed: train.learning_rate"
    corpus.write_text("New text.\n")
    assert stage_states(load_pipeline(path))["a"].reason == ("config changed: train.learning_rate; "
                                                               "data changed: data.train.0.path")


def test_file_hasher_cache_skips_unchanged_files(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("abc")
    cache = tmp_path / "cache.json"
    first = FileHasher(cache)
    digest = first.sha256(data)
    first.save()
    stored = json.loads(cache.read_text())
    stored[str(data)][2] = "remembered"  # prove the second hasher reads the cache, not the file
    cache.write_text(json.dumps(stored))
    assert FileHasher(cache).sha256(data) == "remembered"
    data.write_text("abcd")
    assert FileHasher(cache).sha256(data) not in ("remembered", digest)


def test_lock_refuses_a_second_run(tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus)})
    with RunLock(tmp_path / "run"):
        result = rlhf("run", path)
        assert result.returncode == 2
        assert f"another `rlhf run` is using this run directory (pid {os.getpid()})" in result.stderr
        with pytest.raises(InputError):
            RunLock(tmp_path / "run").__enter__()
    with RunLock(tmp_path / "run"):  # released on exit
        pass


def test_orchestrator_does_not_import_torch_and_is_fast(tmp_path, corpus):
    code = ("import sys, pipeline.cli, pipeline.runner, pipeline.plan, pipeline.registry, rows.corpus, rows.records; "
            "sys.exit(1 if {'torch', 'transformers', 'accelerate'} & set(sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus)})
    start = time.monotonic()
    result = rlhf("plan", path)
    assert result.returncode == 0 and "missing" in result.stdout
    assert time.monotonic() - start < 5  # generous for CI noise; measured well under 1 s


def test_dry_run_launches_nothing(tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus)})
    result = rlhf("run", path, "--dry-run")
    assert result.returncode == 0 and "dry run: nothing launched" in result.stdout
    assert not (tmp_path / "run" / "pre").exists()


def test_bad_data_is_refused_before_any_launch(tmp_path, corpus):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9\n".encode("latin-1"))
    bad_json = tmp_path / "rows.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"txt": "wrong key"}\n')
    stages = {}
    for name, file in (("e", empty), ("l", latin), ("j", bad_json)):
        stage = pretrain_stage(corpus)
        stage["data"]["train"] = [str(file)]
        stages[name] = stage
    result = rlhf("run", write_pipeline(tmp_path / "p.yaml", stages))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {empty}: no text (empty); expected at least one document",
        f"error: {latin}:1: not valid UTF-8 (byte 3); expected UTF-8 text",
        f'error: {bad_json}:2: expected a non-empty string "text" (columns: txt; rename one with the entry\'s columns)',
    ]
    assert not any((tmp_path / "run").glob("*/logs"))


def test_embedded_pipeline_is_the_default():
    result = rlhf("plan")
    assert result.returncode == 0 and "pretrain" in result.stdout
    assert load_pipeline(REPO / "configs" / "pipelines" / "tiny.yaml").run_dir == REPO / "runs" / "tiny"


def test_launch_override_applies_to_every_stage_for_one_run(tmp_path, corpus):
    from pipeline.cli import launch_override
    from pipeline.runner import launch_command

    stage = pretrain_stage(corpus)
    stage["launch"] = {"accelerate_config": str(REPO / "configs" / "accelerate" / "cpu.yaml")}
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", {"a": stage, "b": pretrain_stage(corpus)}))
    assert "cpu.yaml" in " ".join(launch_command(pipeline, "a", tmp_path / "spec.json"))
    pipeline.override = launch_override("zero3_cpu", None)
    for name in ("a", "b"):
        cmd = launch_command(pipeline, name, tmp_path / "spec.json")
        assert cmd[cmd.index("--config_file") + 1] == str(REPO / "configs" / "accelerate" / "zero3_cpu.yaml")
    pipeline.override = launch_override(None, 4)
    cmd = launch_command(pipeline, "b", tmp_path / "spec.json")
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    bad = rlhf("run", tmp_path / "p.yaml", "--launch", "zero9", "--dry-run")
    assert bad.returncode == 2 and "--launch zero9: no such file" in bad.stderr and "zero3" in bad.stderr
