"""The grpo and rloo configs: TRL's loss list, whole groups per step, a reward, weights that match it."""

from __future__ import annotations

import importlib.util
import re

import pytest

from core.errors import InputError
from stages.grpo.config import GRPO_LOSSES, GrpoStage
from tests.helpers import DATA, write_pipeline


def test_the_grpo_losses_are_trls():
    import trl

    help_text = trl.GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    listed = re.findall(r"'([a-z_]+)'", help_text.split("Supported values are")[1].split(". ")[0])
    assert tuple(listed) == GRPO_LOSSES


def test_group_configs_refuse_what_cannot_run(tmp_path):
    from pipeline.config import load_pipeline

    stage = {"kind": "grpo", "model": {"path": str(tmp_path)}, "data": {"train": [str(DATA / "sft" / "chatterbot" / "train.jsonl")]},
             "generation": {"num_generations": 3}, "reward_weights": [1.0, 2.0], "train": {"max_steps": 1, "batch_size": 8}}
    path = write_pipeline(tmp_path / "p.yaml", {"g": stage})
    with pytest.raises(InputError) as raised:
        load_pipeline(path)
    text = "\n".join(raised.value.problems)
    assert "stages.g.inputs: expected a reward: inputs.reward (a reward stage) or reward_model, and/or reward_rule" in text
    assert "stages.g.train.batch_size: must be a multiple of generation.num_generations (3)" in text
    assert "stages.g.reward_weights: 2 weights for 0 rewards" in text
    if importlib.util.find_spec("vllm") is None:
        stage["generation"]["use_vllm"] = True
        with pytest.raises(InputError, match="stages.g.generation.use_vllm: needs the vllm package"):
            load_pipeline(write_pipeline(path, {"g": stage}))
    stage.update(generation={"num_generations": 4}, reward_weights=None,
                 reward_rule={"kind": "rule", "function": "tests.helpers:brevity"})
    assert load_pipeline(write_pipeline(path, {"g": stage})).stages["g"].beta == 0.04
    stage["kind"] = "rloo"
    assert load_pipeline(write_pipeline(path, {"g": stage})).stages["g"].beta == 0.05  # TRL's RLOO default
    stage["reward_rule"]["function"] = "no_such_module:f"
    with pytest.raises(InputError, match="stages.g.reward_rule.function: module 'no_such_module' cannot be imported"):
        load_pipeline(write_pipeline(path, {"g": stage}))


def seen_groups(prompt, answers, reference):
    """A rule that records the groups it was called with (for the test below)."""
    SEEN.append(list(answers))
    return [float(len(answers))] * len(answers)


SEEN: list[list[str]] = []


def test_a_rule_scores_each_group_alone_and_reads_stripped_answers():
    # the same prompt drawn twice in a row: two groups of 4, not one of 8 (issue 23.9); answers stripped as
    # the reward stage and PPO read them
    from stages.common.group_rl import RuleScore

    SEEN.clear()
    score = RuleScore("tests.unit.test_group_rl:seen_groups", group_size=4)
    prompts = [[{"role": "user", "content": "Hi"}]] * 8 + [[{"role": "user", "content": "Bye"}]] * 4
    completions = [[{"role": "assistant", "content": f" answer {i}\n"}] for i in range(12)]
    assert score(prompts, completions) == [4.0] * 12
    assert SEEN == [[f"answer {i}" for i in range(start, start + 4)] for start in (0, 4, 8)]


def test_an_evaluation_judge_is_logged_with_weight_zero():
    from stages.common.group_rl import reward_weights

    judge = {"kind": "rule", "function": "stages.rank.rules:content_overlap"}
    base = {"kind": "grpo", "model": {}, "inputs": {"model": "sft", "reward": "rm"},
            "data": {"train": [str(DATA / "sft" / "chatterbot" / "train.jsonl")]},
            "train": {"max_steps": 1, "batch_size": 8}}
    config = GrpoStage.model_validate({**base, "evaluation_judge": judge})
    assert reward_weights(config) == [1.0, 0.0]
    config = GrpoStage.model_validate({**base, "reward_rule": judge, "reward_weights": [0.5, 2.0],
                                       "generation": {"missing_eos_penalty": 1.0}, "evaluation_judge": judge})
    assert reward_weights(config) == [0.5, 2.0, 1.0, 0.0]
    assert reward_weights(GrpoStage.model_validate(base)) is None
