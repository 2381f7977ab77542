"""The dpo kind on real tiny models through `rlhf run`: the SFT policy learns the held-out preferences, the
artifact loads with plain transformers (LoRA: merged, adapter kept), and a SIGKILL resumes to the same weights."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import DATA, kill_during, ranking_subset, rlhf, word_salad_pairs, write_pipeline

pytestmark = pytest.mark.slow


def dpo_stage(policy_dir, train_file, validation_file, **train) -> dict:
    settings = {"max_steps": 100, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5, "save_every": 25,
                "log_every": 10, **train}
    return {"kind": "dpo", "model": {"path": str(policy_dir)},
            "data": {"train": [str(train_file)], "validation": [str(validation_file)], "max_length": 64,
                     "skip_bad_rows": True},
            "dpo": {"beta": 0.1}, "samples": {"count": 2, "max_new_tokens": 4}, "train": settings}


def test_dpo_learns_preferences_saves_plain_artifacts_and_resumes_exactly(tmp_path, tiny_chat_run):
    policy = tiny_chat_run / "sft" / "artifact"
    pairs = word_salad_pairs(tmp_path / "pairs.jsonl"), word_salad_pairs(tmp_path / "heldout.jsonl", "heldout")
    # K-wise rankings (4 answers: 6 pairs a prompt) with one bad row, for LoRA
    lora = dpo_stage(policy, ranking_subset(tmp_path / "rankings.jsonl", rows=200),
                     DATA / "reward" / "answer-quality" / "heldout.jsonl", max_steps=12, learning_rate=1e-2)
    lora["lora"] = {"r": 4, "alpha": 8}
    lora["dpo"]["precompute_ref_log_probs"] = True  # the reference (adapter off) scored once, up front
    # dpo_resume: the same stage, killed after its first checkpoint and resumed
    path = write_pipeline(tmp_path / "p.yaml", {"dpo": dpo_stage(policy, *pairs), "dpo_lora": lora,
                                                "dpo_resume": dpo_stage(policy, *pairs)})
    result = rlhf("run", path, "--only", "dpo", "dpo_lora")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "run"

    metrics = read_manifest(StageDirs(run / "dpo"))["metrics"]
    assert metrics["train/loss"] < math.log(2)  # the sigmoid loss starts at log 2 (policy = reference)
    assert metrics["eval/reward_accuracy"] > 0.7 and metrics["eval/reward_margin"] > 0  # held-out pairs
    kwise = read_manifest(StageDirs(run / "dpo_lora"))["metrics"]
    assert kwise["data/skipped_rows"] == 1 and kwise["data/train_pairs"] % kwise["data/train_prompts"] == 0
    tuned = AutoModelForCausalLM.from_pretrained(run / "dpo" / "artifact")
    start = AutoModelForCausalLM.from_pretrained(policy)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), start.state_dict().values()))
    assert (run / "dpo_lora" / "artifact" / "adapter" / "adapter_config.json").is_file()
    AutoModelForCausalLM.from_pretrained(run / "dpo_lora" / "artifact")
    assert "reward accuracy" in (run / "report" / "report.md").read_text()

    # killed after its first checkpoint, then resumed: the same weights as the uninterrupted run
    reference = load_file(run / "dpo" / "artifact" / "model.safetensors")
    step = kill_during(run / "dpo_resume", path, "--only", "dpo_resume")
    assert 0 < step < 100
    again = rlhf("run", path, "--only", "dpo_resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert read_manifest(StageDirs(run / "dpo_resume"))["resumed_from_step"] == step
    resumed = load_file(run / "dpo_resume" / "artifact" / "model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
