"""configs/pipelines/compare.yaml shrunk by `--set` to a few minutes and run whole: PPO, GRPO, RLOO, DPO and KTO
from one SFT model on the verifiable objective, judged with SFT by IFEval's checkers beside the guard, and the
report that leads with the verdict."""

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
    "stages.dpo.train.max_steps": 20, "stages.kto.train.max_steps": 20,
    "stages.judged.data.max_prompts": 24, "stages.judged.generation.max_new_tokens": 24,
    "stages.new-types.data.max_prompts": 16, "stages.new-types.generation.max_new_tokens": 24,
}
METHODS = ("ppo", "grpo", "rloo", "dpo", "kto")


def test_the_shrunk_comparison_pipeline_runs_whole_and_reports_every_method(tmp_path):
    overrides = [f"--set={key}={value}" for key, value in SHRUNK.items()] + [f"--set=run_dir={tmp_path / 'run'}"]
    result = rlhf("run", REPO / "configs" / "pipelines" / "compare.yaml", *overrides, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run = tmp_path / "run"
    judged = read_manifest(StageDirs(run / "judged"))["metrics"]
    rows = {r["name"]: r for r in judged["policies"]}
    assert {name: r["kind"] for name, r in rows.items()} == {"sft": "sft", **{m: m for m in METHODS}}
    assert judged["eval/instruction_prompts"] == 24
    for name, row in rows.items():
        assert row["wall_time_s"] > 0 and row["peak_memory_gb"] > 0, name
        assert 0 <= row["win_rate_low"] <= row["win_rate"] <= row["win_rate_high"] <= 1, name
        assert 0 <= row["stop_rate"] <= 1 and row["length"] > 0
        for metric in ("prompt_loose", "prompt_strict", "instruction_loose", "instruction_strict"):
            assert 0 <= row[f"{metric}_low"] <= row[metric] <= row[f"{metric}_high"] <= 1, (name, metric)
        assert row["prompt_strict"] <= row["prompt_loose"] and row["instruction_strict"] <= row["instruction_loose"]
        assert sum(t["count"] for t in row["instruction_types"].values()) > 24 - 1
        assert 0 <= row["function_word_share"] <= 1 and row["content_f1"] is not None
        if name != "sft":
            for metric in ("prompt_loose", "content_f1", "function_word_share", "distinct_2"):
                assert row[f"{metric}_diff_low"] <= row[f"{metric}_diff"] + 1e-9, (name, metric)
                assert row[f"{metric}_diff"] <= row[f"{metric}_diff_high"] + 1e-9, (name, metric)
            assert isinstance(row["guard_worse"], list)
    assert rows["sft"]["kl"] == pytest.approx(0, abs=1e-6)  # the baseline is the reference
    assert rows["sft"].get("prompt_loose_diff") is None
    new_types = read_manifest(StageDirs(run / "new-types"))["metrics"]
    trained_types = set(rows["sft"]["instruction_types"])
    assert not trained_types & {t for r in new_types["policies"] for t in r["instruction_types"]}
    report = (run / "report" / "report.md").read_text()
    verdict = report[report.index("## Verdict"):report.index("## Summary")]
    for name in METHODS:
        assert f"{name}: " in verdict and "IFEval prompt-level loose accuracy" in verdict, name
    assert ("language held" in verdict or "language degraded" in verdict) and "peak memory (GB)" in verdict
    assert "Per instruction type" in report and "--set" in verdict
    for kind in ("grpo", "rloo", "dpo", "kto"):
        assert f"({kind})" in report, kind
    assert json.loads((run / "pipeline.json").read_text())["overrides"]
