"""`python -m benchmarks --quick` as a smoke test: every section runs on real tiny models and yields a
measurement and, where there is a baseline, a ratio. No timing is asserted (these machines are noisy)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_quick_benchmarks_print_a_full_table(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--workdir", str(tmp_path / "work"),
                             "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    sections = {row["section"] for row in rows}
    assert sections == {"pretrain", "sft", "reward", "ppo", "dpo", "grpo", "orchestrator", "data",
                        "generation"}
    for row in rows:
        if row["ours"] is None:  # a section that says why it could not measure here (no vLLM: core/engines.py)
            assert row["section"] == "generation" and "not measured:" in row["note"], row
            continue
        assert math.isfinite(row["ours"]) and row["ours"] > 0, row
        if row["baseline"] is not None:
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    measures = {row["measure"] for row in rows}
    assert {"K=4: K-wise vs pairs (TRL)", "K=8: K-wise vs pairs (TRL)", "ours, packed vs TRL padded",
            "tokens/s vs HF Trainer", "rlhf run, all fresh", "check 20,000 rows (parquet): peak memory",
            "ours vs TRL DPOTrainer", "ours vs TRL GRPOTrainer"} <= measures
    assert "| section | measure | ours | baseline | unit | ratio | notes |" in result.stdout
    assert "peak matmul (float32)" in result.stdout


def test_pipeline_benchmark_copies_a_shipped_pipeline_with_overrides(tmp_path):
    from benchmarks.pipelines import variant
    from pipeline.config import load_pipeline

    copy = variant(REPO / "configs" / "pipelines" / "tiny.yaml", tmp_path, "bf16", steps={"ppo": 3})
    loaded = load_pipeline(copy)  # every data path still resolves from the copy's new place
    assert loaded.run_dir == (tmp_path / "run").resolve()
    assert {s.train.precision for s in loaded.stages.values() if hasattr(s, "train")} == {"bf16"}
    assert loaded.stages["ppo"].train.max_steps == 3
    assert loaded.stages["sft"].train.max_steps == load_pipeline(REPO / "configs/pipelines/tiny.yaml").stages["sft"].train.max_steps
    with pytest.raises(SystemExit, match="no stage nope"):
        variant(REPO / "configs" / "pipelines" / "tiny.yaml", tmp_path, None, steps={"nope": 1})
