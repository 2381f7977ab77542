"""The kto kind on real tiny models through `rlhf run`: unpaired labelled answers (and rankings split at their
median) move the policy's implicit reward apart on held-out answers; the artifact loads with transformers; a
SIGKILL resumes to the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import DATA, kill_during, rlhf, word_salad_pairs, write_pipeline

pytestmark = pytest.mark.slow


def unpaired(pairs_file, target):
    """Each pair as two unpaired rows: the chosen answer desirable, the rejected one not."""
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    target.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r[key], "label": key == "chosen"}) + "\n"
                              for r in rows for key in ("chosen", "rejected")))
    return target


def test_kto_learns_from_unpaired_labels(tmp_path, tiny_chat_run):
    train = unpaired(word_salad_pairs(tmp_path / "pairs.jsonl"), tmp_path / "unpaired.jsonl")
    held = unpaired(word_salad_pairs(tmp_path / "held.jsonl", "heldout"), tmp_path / "held-unpaired.jsonl")
    stage = {"kind": "kto", "model": {"path": str(tiny_chat_run / "sft" / "artifact")},
             "data": {"train": [str(train), str(DATA / "reward" / "answer-quality" / "heldout.jsonl")],
                      "validation": [str(held)], "max_length": 64},
             "samples": {"count": 2, "max_new_tokens": 4},
             "train": {"max_steps": 100, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5, "save_every": 50,
                       "log_every": 10}}
    path = write_pipeline(tmp_path / "p.yaml", {"kto": stage, "kto_resume": stage})  # kto_resume: killed, resumed
    result = rlhf("run", path, "--only", "kto")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = read_manifest(StageDirs(tmp_path / "run" / "kto"))["metrics"]
    assert metrics["eval/reward_margin"] > 0, metrics
    assert metrics["eval/chosen_reward"] > metrics["eval/rejected_reward"]
    assert 0.45 < metrics["data/desirable_fraction"] < 0.55  # pairs give one of each; rankings half and half
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "kto" / "artifact")

    # killed after its first checkpoint and resumed: the same weights as the uninterrupted run
    step = kill_during(tmp_path / "run" / "kto_resume", path, "--only", "kto_resume")
    again = rlhf("run", path, "--only", "kto_resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert read_manifest(StageDirs(tmp_path / "run" / "kto_resume"))["resumed_from_step"] == step
    reference = load_file(tmp_path / "run" / "kto" / "artifact" / "model.safetensors")
    resumed = load_file(tmp_path / "run" / "kto_resume" / "artifact" / "model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
