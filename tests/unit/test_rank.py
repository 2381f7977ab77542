"""The rank kind's labels: ranks from scores, the noise of a simulated labeler, and the config's checks."""

from __future__ import annotations

import random

import pytest

from core.errors import InputError
from pipeline.config import load_pipeline
from stages.rank.labels import append_label, labeled_count, ranks_problem, read_labels
from stages.rank.ordering import labeled_ranks, plackett_luce_ranks, ranks_by_score, tied_pairs
from stages.rank.rules import reference_overlap
from tests.helpers import eval_stage, pretrain_stage, rank_stage, reward_stage, sample_stage, sft_stage, write_pipeline


def test_ranks_by_score_put_the_best_first_and_tie_equal_scores():
    assert ranks_by_score([0.2, 0.9, 0.2, -1.0]) == [2, 1, 2, 3]
    assert tied_pairs([2, 1, 2, 3]) == (1, 6)
    assert labeled_ranks([0.5, 0.5], temperature=0, rng=random.Random(0)) == [1, 1]


def test_a_noisy_labeler_keeps_equal_scores_tied_and_swaps_the_others():
    rng = random.Random(0)
    draws = [labeled_ranks([0.5, 0.5, 0.45, 0.0], temperature=0.1, rng=rng) for _ in range(500)]
    assert all(d[0] == d[1] for d in draws)  # never a preference between answers it cannot tell apart
    swapped = sum(d[2] < d[0] for d in draws) / len(draws)
    assert 0.2 < swapped < 0.5 and all(sorted(set(d)) == [1, 2, 3] for d in draws)


def test_a_plackett_luce_labeler_swaps_close_answers_often_and_far_ones_rarely():
    rng = random.Random(0)
    draws = [plackett_luce_ranks([0.0, 0.1, 3.0], 0.5, rng) for _ in range(2000)]
    assert all(sorted(d) == [1, 2, 3] for d in draws)  # no ties
    close = sum(d[0] < d[1] for d in draws) / len(draws)  # the worse of two close answers placed first
    far = sum(d[1] < d[2] for d in draws) / len(draws)
    assert 0.35 < close < 0.5 and far < 0.01
    cold = [plackett_luce_ranks([0.0, 0.1, 3.0], 1e-3, rng) for _ in range(50)]
    assert all(d == [3, 2, 1] for d in cold)  # temperature towards 0: the order of the scores


def test_the_shipped_rule_scores_word_overlap_with_the_reference():
    prompt = [{"role": "user", "content": "What is AI?"}]
    scores = reference_overlap(prompt, ["the study of machines that think", "a kind of cheese", ""],
                               "Artificial intelligence: machines that think")
    assert scores[0] > scores[1] == scores[2] == 0.0
    with pytest.raises(ValueError, match="reference"):
        reference_overlap(prompt, ["a"], None)


def problems(path) -> list[str]:
    with pytest.raises(InputError) as info:
        load_pipeline(path)
    return info.value.problems


def recipe(corpus, ranked: dict, **reward) -> dict:
    own = reward_stage("sft", corpus)  # any existing file: replaced below
    own["inputs"]["rankings"] = "ranked"
    own["data"].update(train=[], validation=[], **reward)
    return {"pre": pretrain_stage(corpus), "sft": sft_stage("pre"), "samples": sample_stage("sft"),
            "ranked": ranked, "rm_own": own}


def test_the_recipe_validates_and_its_edges_come_from_inputs(tmp_path, corpus):
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", recipe(corpus, rank_stage("samples"))))
    assert pipeline.stages["rm_own"].data.train == []
    assert pipeline.stages["ranked"].inputs == {"samples": "samples"}


@pytest.mark.parametrize("labeler,inputs,expected", [
    ({"kind": "rule", "function": "no_colon"}, {}, "labeler.function: expected module:function"),
    ({"kind": "rule", "function": "no_such_module_here:f"}, {}, "module 'no_such_module_here' cannot be imported"),
    ({"kind": "rule", "function": "stages.rank.rules:reference_overlap"}, {"judge": "sft"}, "inputs.judge: a rule"),
    ({"kind": "judge"}, {}, "labeler.model: give the judge as inputs.judge"),
    ({"kind": "judge", "temperature": -1}, {"judge": "sft"}, "labeler.judge.temperature"),
])
def test_a_labeler_that_cannot_run_is_refused_in_one_line(tmp_path, corpus, labeler, *, inputs, expected):
    ranked = {"kind": "rank", "inputs": {"samples": "samples", **inputs}, "labeler": labeler}
    found = problems(write_pipeline(tmp_path / "p.yaml", recipe(corpus, ranked)))
    assert any(expected in line and "p.yaml" in line for line in found), found


def test_a_reward_stage_needs_training_files_or_rankings(tmp_path, corpus):
    stages = recipe(corpus, rank_stage("samples"))
    del stages["rm_own"]["inputs"]["rankings"]
    found = problems(write_pipeline(tmp_path / "p.yaml", stages))
    assert any("data.train: expected training files, or a rank stage as inputs.rankings" in line for line in found)


def test_sampling_beyond_the_policy_positions_is_refused(tmp_path, corpus):
    stages = recipe(corpus, rank_stage("samples"))
    stages["samples"]["generation"]["max_new_tokens"] = 500  # the tiny model has 128 positions
    found = problems(write_pipeline(tmp_path / "p.yaml", stages))
    assert any("data.max_length + generation.max_new_tokens" in line for line in found), found


def test_labels_append_whole_lines_the_latest_wins_and_a_torn_line_is_ignored(tmp_path):
    path = tmp_path / "labels" / "labels.jsonl"
    append_label(path, {"key": "a", "ranks": [1, 2]})
    append_label(path, {"key": "b", "skip": True})
    append_label(path, {"key": "a", "ranks": [2, 1]})  # a correction
    with open(path, "a") as f:
        f.write('{"key": "c", "ran')  # a server killed mid-write
    labels = read_labels(path)
    assert labels["a"]["ranks"] == [2, 1] and labels["b"]["skip"] is True and "c" not in labels
    assert labeled_count(labels, ["a", "b", "c"]) == 1
    assert ranks_problem([1, 1], 2).startswith("every answer has the same rank")
    assert ranks_problem([1, 3], 2) == "ranks must be whole numbers from 1 (best) to 2"
    assert ranks_problem([1, 2, 2], 3) is None


def test_people_rank_without_a_judge_and_only_a_rank_stage_takes_them(tmp_path, corpus):
    human = {"kind": "rank", "inputs": {"samples": "samples", "judge": "samples"},
             "labeler": {"kind": "human", "min_labeled": 10}}
    found = problems(write_pipeline(tmp_path / "p.yaml", recipe(corpus, human)))
    assert any("stages.ranked.inputs.judge: people rank without a judge model" in p for p in found), found
    stages = recipe(corpus, rank_stage("samples"))
    stages["judged"] = eval_stage({"sft": "sft"}, judge={"kind": "human", "min_labeled": 1})
    found = problems(write_pipeline(tmp_path / "q.yaml", stages))
    assert any("stages.judged.judge" in p for p in found), found
