"""configs/pipelines/compare.yaml shrunk by `--set` to a few minutes and run whole: PPO, GRPO, RLOO and DPO from
one SFT model, judged with SFT by one independent judge, and the report's comparison table."""

from __future__ import annotations

import json

import pytest

from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import REPO, rlhf

pytestmark = pytest.mark.slow

SHRUNK = {
    "stages.pretrain.train.max_steps": 30, "stages.pretrain.train.eval_every": 30,
    "stages.pretrain.model.tokenizer.vocab_size": 1024,
    "stages.sft.train.max_steps": 30, "stages.sft.train.eval_every": 30,
    "stages.samples.data.max_prompts": 96, "stages.samples.generation.max_new_tokens": 24,
    "stages.reward.train.max_steps": 30, "stages.reward.train.eval_every": 30,
    "stages.ppo.train.max_steps": 4, "stages.ppo.evaluation.every": 2, "stages.ppo.evaluation.prompts": 8,
    "stages.ppo.generation.max_new_tokens": 24,
    "stages.grpo.train.max_steps": 4, "stages.grpo.generation.max_new_tokens": 24, "stages.grpo.evaluation_prompts": 8,
    "stages.rloo.train.max_steps": 4, "stages.rloo.generation.max_new_tokens": 24, "stages.rloo.evaluation_prompts": 8,
    "stages.dpo.train.max_steps": 20,
    "stages.judged.data.max_prompts": 24, "stages.judged.generation.max_new_tokens": 24,
}


def test_the_shrunk_comparison_pipeline_runs_whole_and_reports_every_method(tmp_path):
    overrides = [f"--set={key}={value}" for key, value in SHRUNK.items()] + [f"--set=run_dir={tmp_path / 'run'}"]
    result = rlhf("run", REPO / "configs" / "pipelines" / "compare.yaml", *overrides, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run = tmp_path / "run"
    judged = read_manifest(StageDirs(run / "judged"))["metrics"]
    rows = {r["name"]: r for r in judged["policies"]}
    assert set(rows) == {"sft", "ppo", "grpo", "rloo", "dpo"}
    assert {name: r["kind"] for name, r in rows.items()} == {"sft": "sft", "ppo": "ppo", "grpo": "grpo", "rloo": "rloo",
                                                              "dpo": "dpo"}
    for name, row in rows.items():
        assert row["wall_time_s"] > 0 and row["peak_memory_gb"] > 0, name
        assert 0 <= row["win_rate_low"] <= row["win_rate"] <= row["win_rate_high"] <= 1, name
        assert 0 <= row["stop_rate"] <= 1 and row["length"] > 0
    assert rows["sft"]["kl"] == pytest.approx(0, abs=1e-6)  # the baseline is the reference
    report = (run / "report" / "report.md").read_text()
    assert "win rate vs sft" in report and "peak memory (GB)" in report
    for kind in ("grpo", "rloo", "dpo"):
        assert f"({kind})" in report, kind
    assert json.loads((run / "pipeline.json").read_text())["overrides"]
