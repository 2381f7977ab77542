"""TRL's implicit reference (issue 23.4): without `inputs.reference`, LoRA or precomputed log-probs, dpo and kto
(and grpo/rloo with beta > 0) need a reference model, and TRL would rebuild it from the policy's
`config._name_or_path` alone: a Hub model then comes from the default branch, not the pinned commit. Served
offline from an HF cache whose `main` has moved on to other weights, the first step's reference must be the
policy itself: DPO's implicit rewards and GRPO's KL start at 0."""

from __future__ import annotations

import pytest
import torch

from core.history import read_history
from core.layout import StageDirs
from tests.helpers import DATA, rlhf, word_salad_pairs, write_pipeline
from tests.stages.test_sft import tiny_causal_lm

pytestmark = pytest.mark.slow
PINNED, MOVED = "1" * 40, "2" * 40


def test_without_a_reference_stage_the_reference_is_the_pinned_policy(tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    model, tokenizer = tiny_causal_lm(tmp_path)
    for commit, seed in ((PINNED, 0), (MOVED, 1)):
        torch.manual_seed(seed)
        model.apply(model._init_weights)  # other weights at the newer commit
        model.save_pretrained(repo / "snapshots" / commit)
        tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MOVED)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    pinned = {"hub": f"tiny-org/tiny-llama@{PINNED}"}
    train = {"max_steps": 1, "batch_size": 4, "log_every": 1, "learning_rate": 1e-3}
    dpo = {"kind": "dpo", "model": pinned, "data": {"train": [str(word_salad_pairs(tmp_path / "pairs.jsonl"))],
                                                   "max_length": 48, "validation_fraction": 0.1},
           "samples": {"count": 1, "max_new_tokens": 2}, "train": train}
    grpo = {"kind": "grpo", "model": pinned, "beta": 0.1,
            "reward_rule": {"kind": "rule", "function": "tests.helpers:brevity"},
            "data": {"train": [str(DATA / "sft" / "chatterbot" / "train.jsonl")], "max_length": 40},
            "generation": {"num_generations": 4, "max_new_tokens": 6}, "evaluation_prompts": 4, "train": train}
    result = rlhf("run", write_pipeline(tmp_path / "p.yaml", {"dpo": dpo, "grpo": grpo}))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first_dpo = next(r for r in read_history(StageDirs(tmp_path / "run" / "dpo").metrics) if "rewards/chosen" in r)
    assert abs(first_dpo["rewards/chosen"]) < 1e-4 and abs(first_dpo["rewards/rejected"]) < 1e-4, first_dpo
    first_grpo = next(r for r in read_history(StageDirs(tmp_path / "run" / "grpo").metrics) if "kl" in r)
    assert abs(first_grpo["kl"]) < 1e-4, first_grpo
