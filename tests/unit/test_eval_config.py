"""The eval kind's config: policies as a family of inputs, a baseline among them, and a judge that is never
the reward model a policy was optimised against."""

from __future__ import annotations

import pytest

from core.errors import InputError
from pipeline.config import load_pipeline
from pipeline.dag import topological_order
from tests.helpers import eval_stage, ppo_stage, pretrain_stage, reward_stage, sft_stage, write_pipeline

RULE = {"kind": "rule", "function": "stages.rank.rules:reference_overlap"}


def problems(path) -> list[str]:
    with pytest.raises(InputError) as info:
        load_pipeline(path)
    return info.value.problems


def recipe(corpus, judged: dict) -> dict:
    """pre -> sft -> rm -> ppo, gold (a second reward stage PPO never saw), and `judged`."""
    return {"pre": pretrain_stage(corpus), "sft": sft_stage("pre"), "rm": reward_stage("sft", corpus),
            "gold": reward_stage("sft", corpus), "ppo": ppo_stage("sft", "rm", corpus), "judged": judged}


def test_policies_are_a_family_of_inputs_and_edges_of_the_dag(tmp_path, corpus):
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", recipe(corpus, eval_stage({"sft": "sft", "ppo": "ppo"}, "gold"))))
    judged = pipeline.stages["judged"]
    assert judged.inputs == {"policies.sft": "sft", "policies.ppo": "ppo", "judge": "gold"}
    assert judged.family("policies") == {"sft": "sft", "ppo": "ppo"} and judged.baseline_name() == "sft"
    order = topological_order(pipeline.stages)
    assert order.index("judged") > max(order.index("ppo"), order.index("gold"))


def test_the_reward_model_ppo_optimised_is_refused_as_the_judge(tmp_path, corpus):
    found = problems(write_pipeline(tmp_path / "p.yaml", recipe(corpus, eval_stage({"sft": "sft", "ppo": "ppo"}, "rm"))))
    assert any("stages.judged.inputs.judge: 'rm' is the reward model 'ppo' optimised policy 'ppo' against" in p
               for p in found), found
    # also through a chain: a policy fine-tuned further from the PPO stage
    stages = recipe(corpus, eval_stage({"sft": "sft", "later": "later"}, "rm"))
    stages["later"] = sft_stage("ppo")
    found = problems(write_pipeline(tmp_path / "q.yaml", stages))
    assert any("'rm' is the reward model 'ppo' optimised policy 'later' against" in p for p in found), found


@pytest.mark.parametrize("change,expected", [
    ({"baseline": "dpo"}, "stages.judged.baseline: no policy named 'dpo' (policies: sft, ppo)"),
    ({"judge": dict(RULE, temperature=0.5)}, "stages.judged.judge.temperature: an evaluation judge scores without noise"),
    ({"judge": RULE}, "stages.judged.inputs.judge: a rule judge takes no judge model"),
    ({"inputs": {"policies": {"sft": "sft", "ppo": "nowhere"}, "judge": "gold"}},
     "stages.judged.inputs.policies.ppo: no stage named 'nowhere'"),
    ({"inputs": {"judge": "gold"}}, "stages.judged.inputs: missing input 'policies'"),
    ({"inputs": {"policies": "sft", "judge": "gold"}}, "stages.judged.inputs.policies: unknown input role"),
])
def test_eval_config_mistakes_get_one_line_each(tmp_path, corpus, change, *, expected):
    judged = eval_stage({"sft": "sft", "ppo": "ppo"}, "gold")
    judged.update(change)
    found = problems(write_pipeline(tmp_path / "p.yaml", recipe(corpus, judged)))
    assert any(expected in p for p in found), found


def test_a_rule_judge_needs_no_model(tmp_path, corpus):
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", recipe(corpus, eval_stage({"sft": "sft", "ppo": "ppo"},
                                                                                          judge=RULE, baseline="ppo"))))
    assert pipeline.stages["judged"].baseline_name() == "ppo" and "judge" not in pipeline.stages["judged"].inputs


def test_ppo_judges_along_the_way_with_an_independent_reward_model_never_its_own(tmp_path, corpus):
    stages = recipe(corpus, eval_stage({"sft": "sft", "ppo": "ppo"}, "gold"))
    stages["ppo"]["inputs"]["judge"] = "gold"
    stages["ppo"]["evaluation"].update(every=4, judge={"kind": "judge"})
    assert load_pipeline(write_pipeline(tmp_path / "p.yaml", stages)).stages["ppo"].evaluation.every == 4
    stages["ppo"]["inputs"]["judge"] = "rm"
    found = problems(write_pipeline(tmp_path / "q.yaml", stages))
    assert any("stages.ppo.inputs.judge: the judge is the reward model PPO optimises" in p for p in found), found
    stages["ppo"]["evaluation"].pop("judge")
    found = problems(write_pipeline(tmp_path / "r.yaml", stages))
    assert any("stages.ppo.inputs.judge: set evaluation.judge" in p for p in found), found


def test_an_lm_judge_needs_one_model_and_a_question_with_both_placeholders(tmp_path, corpus):
    judged = eval_stage({"sft": "sft", "ppo": "ppo"}, judge={"kind": "lm", "model": {}, "question": "Good? {answer}"})
    found = problems(write_pipeline(tmp_path / "p.yaml", recipe(corpus, judged)))
    assert any("stages.judged.judge.model: give exactly one of model.path, model.gguf, model.hub" in p for p in found), found
    assert any("stages.judged.judge.question: expected the placeholders {prompt} and {answer}" in p for p in found), found
