"""The dpo kind's pure parts: rankings as prompt-weighted pairs, the config's checks, TRL's loss list."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from core.errors import InputError
from stages.dpo.config import DPO_LOSSES
from stages.dpo.pairs import prompt_weighted_pairs, untied_pairs
from tests.helpers import DATA, write_pipeline

USER = [{"role": "user", "content": "p"}]


def test_untied_pairs_skip_ties_and_order_better_first():
    assert untied_pairs({"answers": ["a", "b", "c"], "ranks": [1, 2, 2]}) == [("a", "b"), ("a", "c")]
    assert untied_pairs({"answers": ["a", "b", "c"], "ranks": [3, 1, 2]}) == [("b", "a"), ("b", "c"), ("c", "a")]


def test_every_prompt_weighs_the_same_and_its_pairs_evenly():
    four = {"prompt": [{"role": "user", "content": "four"}], "answers": ["a", "b", "c", "d"], "ranks": [1, 2, 3, 4]}
    pair = {"prompt": [{"role": "user", "content": "two"}], "answers": ["x", "y"], "ranks": [1, 2]}
    rows = prompt_weighted_pairs([four, pair], seed=0)
    by_prompt = Counter(r["prompt"][0]["content"] for r in rows)
    assert by_prompt == {"four": 4, "two": 4}  # 4 = the mean pair count, (6 + 1) / 2 rounded
    four_pairs = Counter((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows if r["prompt"] == four["prompt"])
    assert set(four_pairs) <= set(untied_pairs(four)) and set(four_pairs.values()) == {1}  # a sample, no repeats
    uniform = prompt_weighted_pairs([four, {**four, "prompt": USER}], seed=0)
    assert len(uniform) == 12 and len({(r["prompt"][0]["content"], r["chosen"][0]["content"],
                                        r["rejected"][0]["content"]) for r in uniform}) == 12  # every pair once
    assert prompt_weighted_pairs([pair], seed=0) == [{"prompt": pair["prompt"], "chosen": [{"role": "assistant", "content": "x"}],
                                                      "rejected": [{"role": "assistant", "content": "y"}]}]


def test_one_long_ranking_does_not_multiply_the_set():
    # K = 16 (120 pairs) beside 9 plain pairs: every prompt 120 times made 1,200 rows (issue 23.9)
    sixteen = {"prompt": [{"role": "user", "content": "long"}], "answers": [str(i) for i in range(16)],
               "ranks": list(range(1, 17))}
    pairs = [{"prompt": [{"role": "user", "content": f"p{i}"}], "answers": ["x", "y"], "ranks": [1, 2]} for i in range(9)]
    rows = prompt_weighted_pairs([sixteen, *pairs], seed=0)
    assert len(rows) <= 120 + 9 + 10
    assert len(set(Counter(r["prompt"][0]["content"] for r in rows).values())) == 1  # still equal per prompt


def test_the_loss_types_are_trls():
    import trl

    help_text = trl.DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    listed = re.findall(r"`'([a-z_]+)'`", help_text.split("If multiple")[0])
    assert tuple(listed) == DPO_LOSSES


def test_config_checks_policy_source_and_loss_weights(tmp_path):
    from pipeline.config import load_pipeline

    stage = {"kind": "dpo", "inputs": {"policy": "x"}, "data": {"train": [str(DATA / "reward" / "wordnet" / "train.jsonl")]},
             "dpo": {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "train": {"max_steps": 1}}
    x = {"kind": "sft", "model": {"path": str(tmp_path)}, "data": {"train": [str(DATA / "sft" / "chatterbot" / "train.jsonl")]},
         "train": {"max_steps": 1}}
    path = write_pipeline(tmp_path / "p.yaml", {"x": x, "d": stage})
    with pytest.raises(InputError) as raised:
        load_pipeline(path)
    text = "\n".join(raised.value.problems)
    assert "stages.d.inputs.policy: unknown input role for kind dpo (expected: model, reference, rankings); " \
           "inputs.policy is now inputs.model" in text
    assert "stages.d.model: give exactly one of inputs.model" in text
    assert "stages.d.dpo.loss_weights: 1 weights for 2 losses" in text
    stage.update(inputs={"model": "x"}, dpo={"loss_type": "ipo", "beta": 0.2})
    load_pipeline(write_pipeline(path, {"x": x, "d": stage}))
    stage["dpo"] = {"loss_type": "simpo"}
    with pytest.raises(InputError, match="stages.d.dpo.loss_type"):
        load_pipeline(write_pipeline(path, {"x": x, "d": stage}))
    assert Path(path).is_file()
