"""Reward and SFT trained from Hub datasets offline: an hh-rlhf-shaped dataset (implicit prompts, as transcripts
and as conversations, two configs) and an UltraFeedback-shaped one (explicit prompts, conversational answers,
preference and SFT splits), both Parquet at a revision in a filled HF cache, read through `{hub: ...}` entries."""

from __future__ import annotations

import json
import os

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import DATA, hub_dataset_cache, rlhf, write_pipeline

HH_COMMIT, UF_COMMIT = "1" * 40, "2" * 40


def rankings(start: int, count: int) -> list[dict]:
    """Answer-quality rankings (the easy shipped set) as (prompt, best, worst)."""
    lines = (DATA / "reward" / "answer-quality" / "train.jsonl").read_text().splitlines()[start : start + count]
    out = []
    for line in lines:
        row = json.loads(line)
        ranks = row.get("ranks", list(range(1, len(row["answers"]) + 1)))
        if len(set(ranks)) > 1:
            out.append((row["prompt"], row["answers"][ranks.index(min(ranks))], row["answers"][ranks.index(max(ranks))]))
    return out


def hh_rows(triples, conversational: bool) -> list[dict]:
    if conversational:
        return [{"chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": good}],
                 "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": bad}]}
                for p, good, bad in triples]
    return [{"chosen": f"\n\nHuman: {p}\n\nAssistant: {good}", "rejected": f"\n\nHuman: {p}\n\nAssistant: {bad}"}
            for p, good, bad in triples]


def ultrafeedback_rows(triples) -> list[dict]:
    rows = []
    for i, (p, good, bad) in enumerate(triples):
        chosen = [{"role": "user", "content": p}, {"role": "assistant", "content": good}]
        rows.append({"prompt": p, "prompt_id": str(i), "chosen": chosen,
                     "rejected": [chosen[0], {"role": "assistant", "content": bad}], "messages": chosen,
                     "score_chosen": 8.0, "score_rejected": 3.0})
    return rows


HH_CONFIGS = """configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
- config_name: conversational
  data_files:
  - split: train
    path: data/conversational-*"""
UF_CONFIGS = "configs:\n- config_name: default\n  data_files:\n" + "".join(
    f"  - split: {split}\n    path: data/{split}-*\n" for split in ("train_prefs", "test_prefs", "train_sft", "test_sft"))


@pytest.mark.slow
def test_reward_and_sft_train_from_hub_datasets_offline(tmp_path, tiny_chat_run, monkeypatch):
    cache = tmp_path / "hub"
    hub_dataset_cache(cache, "org/hh-like", HH_COMMIT,
                      splits={"train": hh_rows(rankings(0, 300), False), "conversational": hh_rows(rankings(300, 200), True)},
                      config_yaml=HH_CONFIGS)
    hub_dataset_cache(cache, "org/ultrafeedback-like", UF_COMMIT,
                      splits={"train_prefs": ultrafeedback_rows(rankings(500, 200)), "test_prefs": ultrafeedback_rows(rankings(700, 64)),
                       "train_sft": ultrafeedback_rows(rankings(500, 200)), "test_sft": ultrafeedback_rows(rankings(700, 32))},
                      config_yaml=UF_CONFIGS.rstrip())
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    model = str(tiny_chat_run / "pre" / "artifact")
    train = {"batch_size": 8, "learning_rate": 3e-3, "save_every": 20, "log_every": 10}
    reward = {"kind": "reward", "model": {"path": model},
              "data": {"train": [{"hub": "org/hh-like@main"},
                                 {"hub": "org/hh-like@main", "config": "conversational", "weight": 0.5},
                                 {"hub": "org/ultrafeedback-like@main", "split": "train_prefs"}],
                       "validation": [{"hub": "org/ultrafeedback-like@main", "split": "test_prefs"}], "max_length": 64},
              "train": {"max_steps": 40, "warmup_steps": 4, **train}}
    sft = {"kind": "sft", "model": {"path": model}, "loss_on": "assistant",
           "data": {"train": [{"hub": "org/ultrafeedback-like@main", "split": "train_sft", "columns": {"messages": "messages"}}],
                    "validation": [{"hub": "org/ultrafeedback-like@main", "split": "test_sft",
                                    "columns": {"messages": "messages"}}], "max_length": 64},
           "samples": {"count": 2, "max_new_tokens": 4}, "train": {"max_steps": 20, **train}}
    path = write_pipeline(tmp_path / "p.yaml", {"reward": reward, "sft": sft})
    assert rlhf("plan", path).returncode == 0
    result = rlhf("run", path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    reward_manifest = read_manifest(StageDirs(tmp_path / "run" / "reward"))
    metrics = reward_manifest["metrics"]
    assert metrics["eval/pairwise_accuracy"] > metrics["eval/base_pairwise_accuracy"]
    assert {(h["hub"], h["commit"], h.get("config"), h["split"]) for h in reward_manifest["hub_datasets"]} == {
        ("org/hh-like", HH_COMMIT, None, "train"), ("org/hh-like", HH_COMMIT, "conversational", "train"),
        ("org/ultrafeedback-like", UF_COMMIT, None, "train_prefs"), ("org/ultrafeedback-like", UF_COMMIT, None, "test_prefs")}
    # 300 + 0.5 x 200 + 200 rows, before the validation split (its own source here)
    assert metrics["data/train_prompts"] == len(rankings(0, 300)) + round(0.5 * len(rankings(300, 200))) + len(rankings(500, 200))
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "reward" / "artifact")

    sft_metrics = read_manifest(StageDirs(tmp_path / "run" / "sft"))["metrics"]
    assert sft_metrics["eval/loss"] < sft_metrics["eval/base_loss"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "sft" / "artifact")

    # a new commit on the branch makes both stages stale; the plan says why
    hub_dataset_cache(cache, "org/ultrafeedback-like", "3" * 40,
                      splits={split: ultrafeedback_rows(rankings(500, 40)) for split in ("train_prefs", "test_prefs", "train_sft", "test_sft")},
                      config_yaml=UF_CONFIGS.rstrip())
    planned = rlhf("plan", path).stdout
    assert planned.count("stale") >= 2 and "commit" in planned, planned
    assert os.environ["HF_HUB_OFFLINE"] == "1"
