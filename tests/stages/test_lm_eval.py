"""The lm_eval kind: lm-evaluation-harness on the pipeline's models, offline, on the capitals task that ships in
data/lm_eval (a task YAML in lm-eval's own format, its data beside it). SmolLM2 knows its capitals; the tiny
model answers at chance: the harness's numbers separate them, and the report shows both in one table."""

from __future__ import annotations

import json

import pytest

from core.layout import StageDirs
from core.manifest import read_manifest
from stages.lm_eval.artifact import RESULTS_FILE
from tests.helpers import REPO, rlhf, write_pipeline

pytest.importorskip("lm_eval", reason="pip install lm-eval")

CAPITALS = REPO / "data" / "lm_eval" / "capitals"


@pytest.mark.slow
def test_lm_eval_scores_each_model_with_the_harness_and_the_report_shows_them_side_by_side(tmp_path, tiny_chat_run,
                                                                                          smollm2_dir):
    stages = {"tiny": {"kind": "model", "model": {"path": str(tiny_chat_run / "sft" / "artifact")}},
              "smol": {"kind": "model", "model": {"path": str(smollm2_dir)}},
              "capitals": {"kind": "lm_eval", "inputs": {"policies": {"tiny": "tiny", "smol": "smol"}},
                           "task_dirs": [str(CAPITALS)]}}
    path = write_pipeline(tmp_path / "p.yaml", stages)
    result = rlhf("run", path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    metrics = read_manifest(StageDirs(tmp_path / "run" / "capitals"))["metrics"]
    rows = sum(1 for _ in (CAPITALS / "test.jsonl").open())
    chance = 1 / 4
    assert metrics["lm_eval/smol/capitals/acc"] > 0.8  # 40 capitals, four choices each
    assert abs(metrics["lm_eval/tiny/capitals/acc"] - chance) < 3 * (chance * (1 - chance) / rows) ** 0.5
    results = json.loads((tmp_path / "run" / "capitals" / "artifact" / RESULTS_FILE).read_text())
    assert results["smol"]["results"]["capitals"]["acc,none"] == metrics["lm_eval/smol/capitals/acc"]
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "| task | metric | tiny | smol |" in report
    assert f"| capitals | acc | {metrics['lm_eval/tiny/capitals/acc']:.3f} | {metrics['lm_eval/smol/capitals/acc']:.3f} |" in report


def test_a_task_folder_without_a_task_or_its_data_is_refused_before_launch(tmp_path):
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / "t.yaml").write_text((CAPITALS / "capitals.yaml").read_text())  # its test.jsonl is not beside it
    stages = {"m": {"kind": "model", "model": {"path": str(tmp_path)}},
              "e": {"kind": "lm_eval", "inputs": {"policies": {"m": "m"}}, "task_dirs": [str(empty), str(broken)]},
              "none": {"kind": "lm_eval", "inputs": {"policies": {"m": "m"}}}}
    path = write_pipeline(tmp_path / "p.yaml", stages)
    found = rlhf("plan", path)
    assert found.returncode == 2
    assert f"stages.e.task_dirs.0: no task YAML (with a `task:` key) in {empty}" in found.stderr
    assert f"stages.e.task_dirs.1: t.yaml: data file not found: {broken / 'test.jsonl'}" in found.stderr
    assert "stages.none.tasks: name lm-eval tasks, or task_dirs with task YAMLs" in found.stderr
