"""The judge is never the reward model a policy was optimised against, however it is named (issue 23.8):
models are compared by their weights' content, rules by `module:function`; a rule that is both reward and
judge (RLVR) is said, not refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import InputError
from core.layout import StageDirs
from core.manifest import MANIFEST_SCHEMA, describe_outputs
from sections.scorers import optimised_against, weights_digest
from tests.helpers import DATA, write_pipeline

CHAT = str(DATA / "sft" / "chatterbot" / "train.jsonl")
RULE = "stages.rank.rules:reference_overlap"


def stage_dir(run: Path, name: str, *, weights: bytes, inputs: dict | None = None, config: dict | None = None) -> Path:
    """A committed stage: artifact/model.safetensors (`weights`) and its manifest."""
    dirs = StageDirs(run / name)
    dirs.artifact.mkdir(parents=True)
    (dirs.artifact / "model.safetensors").write_bytes(weights)
    (dirs.artifact / "config.json").write_text(json.dumps({"name": name}))
    manifest = {"schema_version": MANIFEST_SCHEMA, "stage": name, "fingerprint": f"fp-{name}", "config": config or {},
                "inputs": {role: {"stage": src.parent.name, "fingerprint": f"fp-{src.parent.name}", "artifact": str(src)}
                           for role, src in (inputs or {}).items()},
                "outputs": describe_outputs(dirs, dirs.artifact)}
    dirs.manifest.write_text(json.dumps(manifest))
    return dirs.artifact


def test_weights_are_compared_by_content_wherever_they_live(tmp_path):
    rm = stage_dir(tmp_path, "rm", weights=b"reward weights")
    copy = tmp_path / "exported"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes(b"reward weights")
    other = stage_dir(tmp_path, "gold", weights=b"other weights")
    assert weights_digest(rm) == weights_digest(copy) != weights_digest(other)
    assert weights_digest(tmp_path / "nothing-here") is None


def test_the_lineage_names_every_reward_model_and_rule_it_was_optimised_against(tmp_path):
    rm = stage_dir(tmp_path, "rm", weights=b"rm")
    side = tmp_path / "side-rm"
    side.mkdir()
    (side / "model.safetensors").write_bytes(b"side")
    sft = stage_dir(tmp_path, "sft", weights=b"sft")
    ppo = stage_dir(tmp_path, "ppo", weights=b"ppo", inputs={"model": sft, "reward": rm})
    grpo = stage_dir(tmp_path, "grpo", weights=b"grpo", inputs={"model": ppo},
                     config={"reward_model": str(side), "reward_rule": {"kind": "rule", "function": RULE}})
    found = optimised_against(json.loads((grpo.parent / "manifest.json").read_text()))
    assert set(found.models) == {weights_digest(rm), weights_digest(side)}
    assert found.rules == {RULE: "grpo"}
    assert optimised_against(json.loads((sft.parent / "manifest.json").read_text())).models == {}


def eval_context(tmp_path: Path, judge: dict, inputs: dict[str, Path]):
    from core.progress import StageProgress
    from stages.common.entry import StageContext
    from stages.eval.config import EvalStage

    config = EvalStage.model_validate({"kind": "eval", "inputs": {"policies": {r.split(".")[1]: "x" for r in inputs
                                                                               if r.startswith("policies.")}},
                                       "judge": judge, "data": {"prompts": [CHAT]}})
    dirs = StageDirs(tmp_path / "judged")
    spec = {"stage": "judged", "fingerprint": "fp", "inputs": {role: {"artifact": str(a)} for role, a in inputs.items()}}
    return StageContext(spec=spec, config=config, dirs=dirs, inputs=dict(inputs), resume_from=None,
                        progress=StageProgress(dirs, "judged", "fp", is_main=False))


def test_eval_refuses_the_optimised_reward_model_as_a_path_and_marks_rlvr(tmp_path):
    pytest.importorskip("torch")
    from stages.eval.stage import judge_independence

    rm = stage_dir(tmp_path, "rm", weights=b"rm")
    sft = stage_dir(tmp_path, "sft", weights=b"sft")
    ppo = stage_dir(tmp_path, "ppo", weights=b"ppo", inputs={"model": sft, "reward": rm})
    grpo = stage_dir(tmp_path, "grpo", weights=b"grpo", inputs={"model": sft},
                     config={"reward_rule": {"kind": "rule", "function": RULE}})
    policies = {"policies.sft": sft, "policies.ppo": ppo, "policies.grpo": grpo}
    # the reward artifact given as judge.model: stage names alone never saw it
    ctx = eval_context(tmp_path, {"kind": "judge", "model": str(rm)}, policies)
    with pytest.raises(InputError, match=r"has the weights of the reward model that ppo \(inputs.reward: rm\) optimised"):
        judge_independence(ctx, ctx.config.family("policies"))
    # a rule that was also grpo's reward: RLVR, legitimate, and marked
    ctx = eval_context(tmp_path, {"kind": "rule", "function": RULE}, policies)
    assert judge_independence(ctx, ctx.config.family("policies")) == {"sft": False, "ppo": False, "grpo": True}


def test_the_plan_refuses_a_judge_path_that_is_a_policys_reward_model(tmp_path):
    from pipeline.config import load_pipeline

    rm = tmp_path / "rm"
    rm.mkdir()
    grpo = {"kind": "grpo", "model": {"path": str(tmp_path)}, "reward_model": str(rm), "data": {"train": [CHAT]},
            "train": {"max_steps": 1, "batch_size": 4}}
    judged = {"kind": "eval", "inputs": {"policies": {"grpo": "grpo"}}, "judge": {"kind": "judge", "model": str(rm)},
              "data": {"prompts": [CHAT]}}
    with pytest.raises(InputError, match=r"stages.judged.judge.model: .* is the reward model 'grpo' optimised policy"):
        load_pipeline(write_pipeline(tmp_path / "p.yaml", {"grpo": grpo, "judged": judged}))


def test_ppo_refuses_a_judge_with_the_weights_of_its_reward_model(tmp_path):
    pytest.importorskip("torch")
    from stages.ppo.config import PpoStage
    from stages.ppo.stage import refuse_proxy_judge

    rm = stage_dir(tmp_path, "rm", weights=b"rm")
    copy = stage_dir(tmp_path, "rm_copy", weights=b"rm")  # another stage name, the same model
    gold = stage_dir(tmp_path, "gold", weights=b"gold")
    cfg = PpoStage.model_validate({"kind": "ppo", "inputs": {"model": "sft", "reward": "rm", "judge": "rm_copy"},
                                   "data": {"train": [CHAT]}, "evaluation": {"judge": {"kind": "judge"}},
                                   "train": {"max_steps": 1}})
    with pytest.raises(InputError, match="has the weights of inputs.reward, the reward model PPO optimises"):
        refuse_proxy_judge(cfg, judge_dir=copy, reward_dir=rm)
    refuse_proxy_judge(cfg, judge_dir=gold, reward_dir=rm)
