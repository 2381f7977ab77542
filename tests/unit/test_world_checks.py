"""What each kind refuses for its process count before anything is launched (`rlhf plan` reads the count from
the launch settings), and the batch shapes TRL would otherwise crash or hang on (issue 23.2, 23.6, 23.7)."""

from __future__ import annotations

import pytest

from core.errors import InputError
from sections.group_rl import eval_micro_batch
from stages.kto.examples import kl_pairs, labelled
from tests.helpers import DATA, REPO, write_pipeline

CHAT = str(DATA / "sft" / "chatterbot" / "train.jsonl")
RANKED = str(DATA / "reward" / "answer-quality" / "train.jsonl")


def plan_errors(path, capsys) -> str:
    """What `rlhf plan` refuses (exit 2), one line each."""
    from pipeline.cli import main

    capsys.readouterr()
    assert main(["plan", str(path)]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("micro,world,k", [(2, 1, 4), (2, 2, 4), (3, 1, 4), (6, 1, 4), (1, 3, 6), (4, 2, 4), (8, 1, 8)])
def test_evaluation_batches_hold_whole_groups(micro, world, k):
    # TRL groups the gathered rewards by num_generations: batch 16, micro 2, K 4 crashed ('shape [-1, 4]')
    size = eval_micro_batch(micro, world=world, num_generations=k)
    assert (size * world) % k == 0 and size >= 1
    assert size <= micro or size == k // __import__("math").gcd(k, world)


def test_the_plan_refuses_batches_that_do_not_fit_the_launch(tmp_path, capsys):
    group = {"kind": "grpo", "model": {"path": str(tmp_path)}, "data": {"train": [CHAT]},
             "reward_rule": {"kind": "rule", "function": "tests.helpers:brevity"},
             "launch": {"accelerate_config": str(REPO / "configs" / "accelerate" / "ddp_cpu.yaml")},
             "train": {"max_steps": 1, "batch_size": 4, "micro_batch_size": 4}}
    kto = {"kind": "kto", "model": {"path": str(tmp_path)}, "data": {"train": [RANKED]},
           "launch": {"num_processes": 4}, "train": {"max_steps": 1, "batch_size": 4}}
    ppo = {"kind": "ppo", "inputs": {"model": "g", "reward": "rm"}, "data": {"train": [CHAT]},
           "ppo": {"rollout_batch_size": 6, "mini_batch_size": 6}, "launch": {"num_processes": 4},
           "train": {"max_steps": 1}}
    rm = {"kind": "reward", "model": {"path": str(tmp_path)}, "data": {"train": [RANKED]}, "train": {"max_steps": 1}}
    path = write_pipeline(tmp_path / "p.yaml", {"g": group, "k": kto, "rm": rm, "ppo": ppo})
    text = plan_errors(path, capsys)
    assert "stage g: train.batch_size: 4 must be a multiple of micro_batch_size (2) x processes (2)" not in text
    assert "stage k: train.batch_size: kto needs at least 2 answers per process: 4 over 4 processes" in text
    assert "stage ppo: ppo: rollout_batch_size (6) and mini_batch_size (6) must be multiples of the process " \
           "count (4) (on 4 processes)" in text
    group.update(generation={"num_generations": 2}, launch={"num_processes": 4})
    group["train"].update(batch_size=6, micro_batch_size=6)
    assert "stage g: train.batch_size: 6 must be a multiple of micro_batch_size (1) x processes (4) (on 4 processes)" \
        in plan_errors(write_pipeline(path, {"g": group}), capsys)


def test_kto_refuses_one_answer_per_micro_batch(tmp_path):
    from pipeline.config import load_pipeline

    kto = {"kind": "kto", "model": {"path": str(tmp_path)}, "data": {"train": [RANKED]},
           "train": {"max_steps": 1, "batch_size": 4, "micro_batch_size": 1}}
    with pytest.raises(InputError, match=r"stages.k.train.micro_batch_size: kto needs at least 2 answers per process"):
        load_pipeline(write_pipeline(tmp_path / "p.yaml", {"k": kto}))
    kto["kto"] = {"loss_type": "apo_zero_unpaired"}  # no KL estimate: one answer is enough
    load_pipeline(write_pipeline(tmp_path / "p.yaml", {"k": kto}))


def test_kto_examples_are_shuffled_so_its_kl_pairs_mismatch_prompts():
    # a prompt's answers side by side: TRL's rotation paired every answer with its own prompt's (32 of 32)
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "completions": [f"a{i}.{j}" for j in range(4)],
             "labels": [True, True, False, False]} for i in range(40)] + \
           [{"prompt": [{"role": "user", "content": f"late{i}"}], "completions": ["x", "y"], "labels": [True, False]}
            for i in range(10)]
    examples = labelled(rows, seed=0)
    assert len(examples) == 180 and examples == labelled(rows, seed=0) and examples != labelled(rows, seed=1)
    pairs = kl_pairs(examples, batch_size=8)
    matched = sum(a["prompt"] == b["prompt"] for a, b in pairs)
    assert matched < len(pairs) / 4
    # the last source is reached early, not only after every other row
    assert any(e["prompt"][0]["content"].startswith("late") for e in examples[:32])
