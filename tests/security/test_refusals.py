"""Hostile or broken input gets one line and exit 2 before anything runs, instead of a traceback, a hang or a
side effect: a YAML alias bomb, a latin-1 file, rules from the standard library or from a package whose
__init__ would run at plan time, Hub ids that climb out of the cache, infinite numbers, loose label fields,
label files that are not UTF-8 or nest too deeply, a busy port, an export over a file; and a stage never
imports code from the directory `rlhf run` was started in."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rows.datasources import source_rows
from stages.sample.artifact import sample_key
from tests.helpers import REPO, pretrain_stage, rank_stage, rlhf, sample_stage, small_corpus, write_pipeline


def one_line_refusal(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_a_yaml_alias_bomb_and_a_latin1_file_are_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    rows = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")]
    bomb.write_text("\n".join(rows + ["run_dir: run", "stages: {s: [*h]}"]) + "\n")
    started = time.monotonic()
    one_line_refusal(rlhf("plan", bomb), "alias bomb")
    assert time.monotonic() - started < 30
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run_dir: caf\xe9\nstages: {}\n".encode("latin-1"))
    one_line_refusal(rlhf("plan", latin), f"{latin}:1: not valid UTF-8")


def test_rules_hub_ids_and_numbers_that_would_run_code_or_escape_are_refused(tmp_path):
    package = tmp_path / "evilpkg"
    package.mkdir()
    marker = tmp_path / "package-ran"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "rules.py").write_text("def score(prompt, answers, reference):\n    return [0.0] * len(answers)\n")
    corpus = small_corpus(tmp_path)

    def plan(stages: dict) -> subprocess.CompletedProcess:
        config = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus, max_steps=1), **stages})
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "plan", str(config)], capture_output=True,
                              text=True, timeout=120, cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)])))

    for function, expected in (("os:system", "is the standard library's"),
                               ("subprocess:run", "is the standard library's")):
        stages = {"samples": sample_stage("pre"), "ranked": rank_stage("samples", kind="rule", function=function)}
        one_line_refusal(plan(stages), "labeler.function", expected)
    fine = plan({"samples": sample_stage("pre"), "ranked": rank_stage("samples", kind="rule",
                                                                       function="evilpkg.rules:score")})
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert not marker.exists()  # found, not imported: a plan runs no package's code

    for hub in ("owner/name@../../x", "a/..@main"):
        sft = {"kind": "model", "model": {"hub": hub}}
        one_line_refusal(plan({"base": sft}), "model.hub", "expected owner/name@revision")
    one_line_refusal(plan({"pre": pretrain_stage(corpus, max_steps=1, learning_rate=float("inf"))}),
                     "learning_rate", "finite")


@pytest.fixture
def human_ranked(tmp_path) -> tuple[Path, list[dict]]:
    """(run dir, samples): a pipeline whose rank stage is people, with a samples artifact in place."""
    stages = {"pre": pretrain_stage(small_corpus(tmp_path), max_steps=1), "samples": sample_stage("pre"),
              "people": rank_stage("samples", kind="human", min_labeled=1)}
    config = write_pipeline(tmp_path / "p.yaml", stages)
    samples = [{"prompt": [{"role": "user", "content": f"q{i}?"}], "answers": ["a", "b"]} for i in range(2)]
    artifact = tmp_path / "run" / "samples" / "artifact"
    artifact.mkdir(parents=True)
    (artifact / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (tmp_path / "run" / "pipeline.json").write_text(json.dumps({"pipeline": str(config), "overrides": []}))
    return tmp_path / "run", samples


def test_label_files_ports_and_exports_that_used_to_raise_are_one_line(human_ranked, tmp_path):
    run, samples = human_ranked
    key = sample_key(samples[0]["prompt"], samples[0]["answers"])
    loose = tmp_path / "loose.jsonl"
    loose.write_text(json.dumps({"key": key, "ranks": [1, 2], "skip": "yes"}) + "\n"
                     + json.dumps({"key": key, "flag": 123}) + "\n")
    result = rlhf("label", run, "--import", loose)
    assert result.returncode == 2 and "loose.jsonl:1: skip must be true or false" in result.stderr
    assert "loose.jsonl:2: flag must be a text" in result.stderr
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"key": "caf\xe9"}\n')
    assert "latin.jsonl:1: not valid UTF-8" in rlhf("label", run, "--import", latin).stderr
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    one_line_refusal(rlhf("label", run, "--import", deep), "deep.jsonl:1: ")

    one_line_refusal(rlhf("label", run, "--export", tmp_path / "missing" / "out.jsonl"), "does not exist")
    existing = tmp_path / "mine.jsonl"
    existing.write_text("keep me\n")
    one_line_refusal(rlhf("label", run, "--export", existing), "exists")
    assert existing.read_text() == "keep me\n"

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        one_line_refusal(rlhf("label", run, "--port", str(busy.getsockname()[1]), timeout=60), "cannot serve there")


def test_a_stage_never_imports_code_from_the_directory_rlhf_runs_in(tmp_path):
    downloaded = tmp_path / "downloaded"
    marker = tmp_path / "cwd-code-ran"
    for package in ("core", "stages"):
        (downloaded / package).mkdir(parents=True)
        (downloaded / package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(small_corpus(tmp_path), max_steps=1)})
    result = subprocess.run([sys.executable, "-P", "-m", "pipeline.cli", "run", str(config)], cwd=downloaded,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not marker.exists()


def test_a_csv_with_a_byte_order_mark_reads_with_its_first_column_named_as_written(tmp_path):
    table = tmp_path / "excel.csv"
    table.write_bytes("prompt,chosen,rejected\nhi,yes,no\n".encode("utf-8-sig"))
    assert [row for _, row in source_rows(table)] == [{"prompt": "hi", "chosen": "yes", "rejected": "no"}]
