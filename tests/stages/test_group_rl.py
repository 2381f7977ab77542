"""The critic-free RL kinds on real tiny models through `rlhf run`: grpo against a rule and the reward stage's
model together, rloo with LoRA; the reward model scores as plain transformers reads it; SIGKILL resumes."""

from __future__ import annotations

import importlib.util
import json
import math
import sqlite3

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from core.history import read_history
from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import DATA, kill_during, rlhf, write_pipeline

pytestmark = pytest.mark.slow
BREVITY = {"kind": "rule", "function": "tests.helpers:brevity"}


def group_stage(kind: str, run, **train) -> dict:
    settings = {"max_steps": 12, "batch_size": 8, "learning_rate": 3e-3, "save_every": 4, "log_every": 2, **train}
    return {"kind": kind, "model": {"path": str(run / "sft" / "artifact")},
            "data": {"train": [str(DATA / "sft" / "chatterbot" / "train.jsonl")],
                     "validation": [str(DATA / "sft" / "chatterbot" / "train.jsonl")], "max_length": 40},
            "generation": {"num_generations": 4, "max_new_tokens": 16}, "evaluation_prompts": 16, "train": settings}


def test_grpo_and_rloo_train_against_their_rewards_and_resume(tmp_path, tiny_chat_run, monkeypatch):
    grpo = group_stage("grpo", tiny_chat_run, max_steps=16)
    grpo.update(reward_rule=BREVITY, reward_model=str(tiny_chat_run / "rm" / "artifact"), reward_weights=[0.1, 1.0])
    grpo["generation"]["missing_eos_penalty"] = 1.0
    # 2 answers per forward, 4 per group: the held-out evaluation crashed on it ('shape [-1, 4]', issue 23.6)
    rloo = group_stage("rloo", tiny_chat_run, micro_batch_size=2, eval_every=4)
    rloo["reward_rule"] = BREVITY
    # an independent judge logged at every evaluation, never trained on: the report's judge-vs-KL curve
    rloo["evaluation_judge"] = {"kind": "rule", "function": "stages.rank.rules:content_overlap"}
    rloo_lora = group_stage("rloo", tiny_chat_run, learning_rate=3e-2)
    rloo_lora.update(reward_rule=BREVITY, lora={"r": 4, "alpha": 8})
    tracked = importlib.util.find_spec("trackio") is not None
    if tracked:  # TRL's completions table, in a local trackio project
        monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
        rloo_lora["tracking"] = {"backend": "trackio", "project": "group-rl"}
    # grpo_resume: the same grpo stage, killed after its first checkpoint and resumed
    path = write_pipeline(tmp_path / "p.yaml", {"grpo": grpo, "rloo": rloo, "rloo_lora": rloo_lora, "grpo_resume": grpo,
                                                "rloo_resume": rloo})
    result = rlhf("run", path, "--only", "grpo", "rloo", "rloo_lora")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "run"

    for name in ("grpo", "rloo"):
        metrics = read_manifest(StageDirs(run / name))["metrics"]
        assert metrics["eval/length"] < metrics["eval/base_length"], (name, metrics)  # the rule it optimised
        assert metrics["eval/kl"] > 0 and math.isfinite(metrics["eval/reward"])
        assert metrics["train/answers"] == metrics["train/steps"] * 8 and 0 <= metrics["eval/stop_rate"] <= 1
        AutoModelForCausalLM.from_pretrained(run / name / "artifact")
    grpo_metrics = read_manifest(StageDirs(run / "grpo"))["metrics"]
    assert grpo_metrics["eval/reward_model_reward"] is not None and grpo_metrics["eval/rule_reward"] is not None
    # the penalty of answers cut at max_new_tokens: minus 1 times the share that never stopped
    assert grpo_metrics["eval/missing_eos_reward"] == pytest.approx(grpo_metrics["eval/stop_rate"] - 1, abs=1e-6)
    points = [r for r in read_history(StageDirs(run / "rloo").metrics) if "eval_rewards/judge/mean" in r]
    # the evaluation at the last step is the stage's final one, not repeated (it cost ~90 s on SmolLM2)
    assert [p["step"] for p in points] == [0, 4, 8, 12] and all("eval_kl" in p for p in points)
    rloo_metrics = read_manifest(StageDirs(run / "rloo"))["metrics"]
    assert rloo_metrics["eval/reward"] == pytest.approx(points[-1]["eval_reward"])
    for point in points:  # weight 0: the reward TRL trains on is the rule's alone
        assert point["eval_reward"] == pytest.approx(point["eval_rewards/rule/mean"], abs=1e-6)
    assert rloo_metrics["eval/base_judge_reward"] is not None
    assert (run / "rloo_lora" / "artifact" / "adapter" / "adapter_config.json").is_file()
    assert read_manifest(StageDirs(run / "rloo_lora"))["metrics"]["eval/kl"] > 0  # the adapter moved the policy
    AutoModelForCausalLM.from_pretrained(run / "rloo_lora" / "artifact")
    if tracked:
        with sqlite3.connect(tmp_path / "trackio" / "group-rl.db") as db:
            logged = [json.loads(metrics) for run_name, metrics in db.execute("select run_name, metrics from metrics")
                      if run_name == "run/rloo_lora"]
        tables = [entry["completions"]["_value"] for entry in logged if "completions" in entry]
        assert tables and all(row["completion"] for row in tables[0]), logged[:3]

    # killed after its first checkpoint and resumed: it finishes from that step
    reference = load_file(run / "grpo" / "artifact" / "model.safetensors")
    step = kill_during(run / "grpo_resume", path, "--only", "grpo_resume")
    again = rlhf("run", path, "--only", "grpo_resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    manifest = read_manifest(StageDirs(run / "grpo_resume"))
    assert manifest["resumed_from_step"] == step and manifest["metrics"]["train/steps"] == 16
    resumed = load_file(run / "grpo_resume" / "artifact" / "model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    step = kill_during(run / "rloo_resume", path, "--only", "rloo_resume")
    assert rlhf("run", path, "--only", "rloo_resume").returncode == 0
    assert read_manifest(StageDirs(run / "rloo_resume"))["resumed_from_step"] == step
    reference = load_file(run / "rloo" / "artifact" / "model.safetensors")
    resumed = load_file(run / "rloo_resume" / "artifact" / "model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_the_reward_function_scores_as_plain_transformers_reads_the_reward_model(tiny_chat_run):
    from stages.common.group_rl import RewardModelScore
    from stages.common.hf_models import Loading

    rm = tiny_chat_run / "rm" / "artifact"
    score = RewardModelScore(rm, loading=Loading(), max_length=64, batch_size=2)
    prompts = [[{"role": "user", "content": "What is a rose?"}], [{"role": "user", "content": "Hi"}]] * 2
    completions = [[{"role": "assistant", "content": text}] for text in ("A flower.", "Hello", "A red one", "Bye")]
    ours = score(prompts, completions)
    tokenizer = AutoTokenizer.from_pretrained(rm)
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    for prompt, completion, value in zip(prompts, completions, ours):
        text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            assert model(**ids).logits[0, 0].item() == pytest.approx(value, abs=1e-5)
