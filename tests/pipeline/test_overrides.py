"""`--set` overrides, typed and checked like the file and recorded for later commands; `defaults:` merged
into every stage that has the section; "did you mean" for a near-miss key."""

from __future__ import annotations

import json

import pytest
import yaml

from core.errors import InputError
from pipeline.config import load_pipeline
from pipeline.overrides import apply_overrides, merge_under, parse_override
from tests.helpers import pretrain_stage, rlhf, sample_stage, sft_stage, write_pipeline


def test_an_override_is_read_as_yaml_and_set_on_its_path():
    assert parse_override("stages.sft.train.learning_rate=1e-5") == (("stages", "sft", "train", "learning_rate"), "1e-5")
    assert parse_override("a.b=[1, 2]")[1] == [1, 2] and parse_override("a.b=true")[1] is True
    assert apply_overrides({"a": {"x": 1}}, ["a.b.c=2"]) == {"a": {"x": 1, "b": {"c": 2}}}
    with pytest.raises(InputError, match="expected KEY.PATH=VALUE"):
        parse_override("stages.sft")
    with pytest.raises(InputError, match="a.x is not a mapping"):
        apply_overrides({"a": {"x": 1}}, ["a.x.y=2"])
    assert merge_under({"train": {"max_steps": 5}}, {"train": {"max_steps": 9, "precision": "bf16"}}) == \
        {"train": {"max_steps": 5, "precision": "bf16"}}


def test_overrides_are_typed_checked_and_named_in_errors(tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus)})
    pipeline = load_pipeline(path, ["stages.pre.train.learning_rate=1e-5", "stages.pre.train.max_steps=7"])
    assert pipeline.stages["pre"].train.learning_rate == 1e-5 and pipeline.stages["pre"].train.max_steps == 7
    with pytest.raises(InputError) as info:
        load_pipeline(path, ["stages.pre.train.max_steps=many", "stages.pre.train.learnin_rate=1"])
    found = info.value.problems
    assert any(p.startswith("--set stages.pre.train.max_steps: stages.pre.train.max_steps: input should be a valid "
                            "integer") for p in found), found
    assert any("stages.pre.train.learnin_rate: unknown key (did you mean learning_rate?" in p for p in found), found


def test_defaults_merge_into_every_stage_that_has_the_section_under_its_own_values(tmp_path, corpus):
    stages = {"pre": pretrain_stage(corpus), "sft": sft_stage("pre"), "samples": sample_stage("sft")}
    stages["sft"]["train"]["precision"] = "fp32"
    path = write_pipeline(tmp_path / "p.yaml", stages, defaults={"train": {"precision": "bf16", "seed": 7}})
    pipeline = load_pipeline(path)
    assert pipeline.stages["pre"].train.precision == "bf16" and pipeline.stages["pre"].train.seed == 7
    assert pipeline.stages["sft"].train.precision == "fp32"  # the stage's own value wins
    assert not hasattr(pipeline.stages["samples"], "train")  # a sample stage has no train section: left alone


def test_rlhf_run_records_its_overrides_and_later_commands_apply_them(tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus, max_steps=4, save_every=10)})
    done = rlhf("run", path, "--set", "stages.pre.train.max_steps=3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with overrides: --set stages.pre.train.max_steps=3" in done.stdout
    record = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert record["overrides"] == ["stages.pre.train.max_steps=3"]
    assert "fresh" in rlhf("plan", path).stdout  # the recorded override applies: still fresh
    assert "fresh" in rlhf("status", tmp_path / "run").stdout
    changed = rlhf("plan", path, "--no-overrides").stdout
    assert "stale" in changed and "train.max_steps" in changed
    assert yaml.safe_load(path.read_text())["stages"]["pre"]["train"]["max_steps"] == 4  # the file is untouched
