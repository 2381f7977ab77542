"""`rlhf schema KIND`: every setting a shipped pipeline uses is listed with its type and default, and only what
the kind reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from pipeline.registry import KINDS
from pipeline.settings_doc import render_markdown, setting_rows, settings_reference
from tests.helpers import REPO, rlhf

PIPELINES = sorted((REPO / "configs" / "pipelines").glob("*.yaml"))


def used_keys(section: dict, prefix: str = ""):
    """Dotted keys of a stage's settings as a pipeline file writes them (list entries as key[])."""
    for name, value in section.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and name not in ("inputs", "columns"):
            yield from used_keys(value, f"{key}.")
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for item in value:
                yield from used_keys(item, f"{key}[].")
        else:
            yield key


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda path: path.stem)
def test_every_setting_a_shipped_pipeline_uses_is_listed(pipeline):
    stages = yaml.safe_load(pipeline.read_text())["stages"]
    for name, stage in stages.items():
        listed = {re.sub(r"\[kind=[^]]+\]", "", row.key) for row in setting_rows(stage["kind"])}
        missing = [key for key in used_keys(stage) if key not in listed]
        assert not missing, f"{pipeline.name} stage {name}: {missing}"


def test_ppo_lists_what_it_reads_and_says_what_stays_out_of_the_fingerprint():
    rows = {row.key: row for row in setting_rows("ppo")}
    assert rows["train.max_steps"].default == "required" and rows["train.max_steps"].type == "integer"
    assert not any(key in rows for key in ("train.batch_size", "train.micro_batch_size", "train.liger_kernel"))
    assert rows["ppo.kl.beta"].default == "0.02" and rows["ppo.kl.beta"].fingerprinted
    assert rows["generation.engine"].type == '"hf" | "vllm"'
    assert not rows["generation.vllm.kv_cache_gb"].fingerprinted and not rows["train.save_every"].fingerprinted
    assert rows["evaluation.judge[kind=rule].function"].default == "required"
    assert rows["data.train[].path"].type == "string or null"


def test_the_cli_prints_a_kind_or_its_json_schema_and_refuses_an_unknown_kind():
    shown = rlhf("schema", "sft")
    assert shown.returncode == 0 and "train.batch_size: integer = 16" in shown.stdout
    schema = json.loads(rlhf("schema", "rank", "--json").stdout)
    assert set(schema["properties"]) == set(KINDS["rank"].model_fields)
    refused = rlhf("schema", "ppx")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: rlhf schema ppx: no such kind (kinds: {', '.join(KINDS)})"]


def test_a_reader_that_leaves_early_gets_no_traceback():
    piped = subprocess.run(f"{sys.executable} -m pipeline.cli schema ppo | true", shell=True, cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "Traceback" not in piped.stderr, piped.stderr


def test_docs_settings_is_generated_from_the_schemas_as_they_are_now():
    written = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    assert written == settings_reference(), "docs/settings.md is stale: rlhf schema --markdown > docs/settings.md"
    assert rlhf("schema", "--markdown").stdout == written


def test_every_kind_has_a_row_in_the_readme_a_section_in_kinds_md_and_a_line_in_rlhf_schema():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    kinds_doc = (REPO / "docs" / "kinds.md").read_text(encoding="utf-8")
    anchors = set(re.findall(r"^## (\w+)$", kinds_doc, flags=re.M)) | set(re.findall(r'<a id="(\w+)">', kinds_doc))
    listed = rlhf("schema").stdout.splitlines()
    for kind in KINDS:
        assert f"| [`{kind}`](docs/kinds.md#{kind}) |" in readme, f"the README's table of kinds lacks {kind}"
        assert kind in anchors, f"docs/kinds.md has no section for {kind}"
        assert any(line.startswith(f"{kind}: ") for line in listed), f"rlhf schema does not list {kind}"
    assert "| `ppo.kl.beta` | number | 0.02 |" in render_markdown("ppo")
    refused = rlhf("schema", "--json")
    assert refused.returncode == 2 and "name a kind" in refused.stderr
