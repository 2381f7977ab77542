"""`--set` overrides: typed and checked like the file, for one command (kept with --save-overrides), paths
read from the current directory, a stage typo named against the --set; `defaults:` merged into every stage
that has the section; "did you mean" for a near-miss key."""

from __future__ import annotations

import json

import pytest
import yaml

from core.errors import InputError
from pipeline.config import load_pipeline
from pipeline.overrides import apply_overrides, merge_under, parse_override
from tests.helpers import pretrain_stage, rlhf, sample_stage, sft_stage, small_corpus, write_pipeline


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


def test_set_applies_to_one_command_and_save_overrides_keeps_it(tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus, max_steps=4, save_every=10)})
    done = rlhf("run", path, "--set", "stages.pre.train.max_steps=3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with overrides: --set stages.pre.train.max_steps=3" in done.stdout
    record = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert record["overrides"] == ["stages.pre.train.max_steps=3"] and record["saved"] == []
    # the file, without --set, is the file: pre is stale, and the command says why
    plain = rlhf("plan", path).stdout
    assert "stale" in plain and "train.max_steps" in plain
    assert "not applied: the last `rlhf run` of this file also had --set stages.pre.train.max_steps=3" in plain
    assert "fresh" in rlhf("status", tmp_path / "run").stdout  # the run directory: the run as it was made
    kept = rlhf("run", path, "--set", "stages.pre.train.max_steps=3", "--save-overrides")
    assert kept.returncode == 0 and "nothing to run" in kept.stdout, kept.stdout + kept.stderr
    assert json.loads((tmp_path / "run" / "pipeline.json").read_text())["saved"] == ["stages.pre.train.max_steps=3"]
    saved = rlhf("plan", path).stdout
    assert "fresh" in saved and "with overrides: --set stages.pre.train.max_steps=3" in saved
    assert "stale" in rlhf("plan", path, "--no-overrides").stdout
    assert yaml.safe_load(path.read_text())["stages"]["pre"]["train"]["max_steps"] == 4  # the file is untouched


def test_a_set_for_a_stage_the_file_lacks_is_named_against_the_set(tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus)})
    typo = rlhf("plan", path, "--set", "stages.pree.train.max_steps=2")
    assert typo.returncode == 2
    assert typo.stderr.strip() == (f"error: --set stages.pree.train.max_steps: no stage pree in {path} (did you mean "
                                   "pre? stages: pre)")
    whole = json.dumps(pretrain_stage(corpus, max_steps=2))
    assert rlhf("plan", path, "--set", f"stages.extra={whole}").returncode == 0  # a whole new stage is allowed


def test_relative_paths_in_set_are_read_from_the_current_directory(tmp_path, corpus):
    (tmp_path / "configs").mkdir()
    path = write_pipeline(tmp_path / "configs" / "p.yaml", {"pre": pretrain_stage(corpus)})
    other = small_corpus(tmp_path, paragraphs=300, name="other.txt")
    planned = rlhf("plan", path, "--set", f"stages.pre.data.train=[{other.name}]", "--set", "run_dir=mine",
                   cwd=tmp_path)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert f"stages.pre.data.train=[\"{other}\"]" in planned.stdout and f"run_dir=\"{tmp_path / 'mine'}\"" in planned.stdout
    # the file's own relative paths stay relative to the file
    assert rlhf("plan", path, "--set", "stages.pre.data.train=[other.txt]", cwd=tmp_path / "configs").returncode == 2
