"""A non-editable `pip install .`: the embedded pipeline, its data and the accelerate configs come from the
installed package data, `rlhf plan` and `rlhf run` work from any directory, and the run lands there, never
inside site-packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_an_installed_copy_runs_the_embedded_pipeline_without_the_checkout(tmp_path):
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-compile", "--target", str(target), str(REPO)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (target / "rlhf_pipeline_assets" / "configs" / "pipelines" / "tiny.yaml").is_file()
    assert (target / "rlhf_pipeline_assets" / "data" / "sft" / "python-faq" / "train.jsonl").is_file()
    assert not (target / "rlhf_pipeline_assets" / "setup.py").exists()

    work = tmp_path / "work"
    work.mkdir()
    # the installed copy first on the path, ahead of the checkout this suite runs from
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONUNBUFFERED="1")

    def rlhf(*args):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)

    where = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    planned = rlhf("plan")
    assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr[-2000:]
    assert "pretrain" in planned.stdout and "judged" in planned.stdout

    ran = rlhf("run", "--only", "pretrain", "--launch", "cpu", "--set", "stages.pretrain.train.max_steps=2",
               "--set", "stages.pretrain.train.eval_every=2", "--set", "stages.pretrain.model.tokenizer.vocab_size=512")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    stage = work / "runs" / "tiny" / "pretrain"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert all(f["path"].startswith(str(target)) for f in manifest["data_files"]) and manifest["data_files"]
    AutoModelForCausalLM.from_pretrained(stage / "artifact")
    assert not (target / "rlhf_pipeline_assets" / "runs").exists()
    assert "pretrain" in rlhf("status").stdout
