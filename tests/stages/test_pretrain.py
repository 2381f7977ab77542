"""The pretrain stage through the real launchers: artifact, caching, re-runs, SIGKILL + resume, refusals."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.checkpoints import CHECKPOINT_MARKER, complete_checkpoints
from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import (
    launch_stage,
    pretrain_stage,
    rlhf,
    small_corpus,
    status_row,
    wait_for_checkpoint,
    wait_until_stage_exits,
    write_pipeline,
)

pytestmark = pytest.mark.slow


def losses(stage_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (stage_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(stage_dir / "artifact" / "model.safetensors")


def continued_stage(corpus: Path, source: str) -> dict:
    """Continued pretraining from another stage's artifact."""
    stage = pretrain_stage(corpus, max_steps=10, learning_rate=1e-3)
    stage["model"], stage["inputs"] = {}, {"model": source}
    return stage


def test_run_writes_a_loadable_artifact_then_caches_and_reruns_on_data_change(tmp_path, corpus):
    other = small_corpus(tmp_path, paragraphs=150, name="other.txt")
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus), "more": continued_stage(other, "pre")})
    result = rlhf("run", path)
    assert result.returncode == 0, result.stdout + result.stderr
    stage = tmp_path / "run" / "pre"

    # manifest: complete, with metrics, data hashes, versions, and every artifact file
    manifest = read_manifest(StageDirs(stage))
    assert manifest["stage"] == "pre" and manifest["world_size"] == 1
    if "OMP_NUM_THREADS" not in os.environ:  # every core of the machine, not accelerate's default of one
        assert manifest["metrics"]["resources/cpu_threads"] == len(os.sched_getaffinity(0))
    assert manifest["metrics"]["train/steps"] == 40
    assert 1 < manifest["metrics"]["eval/perplexity"] < 512  # better than uniform over the vocabulary
    assert manifest["data_files"][0]["path"] == str(corpus)
    assert manifest["versions"]["torch"] == torch.__version__
    listed = {o["path"] for o in manifest["outputs"]}
    assert {"artifact/model.safetensors", "artifact/config.json", "artifact/tokenizer.json",
            "artifact/tokenizer_config.json"} <= listed
    assert listed == {f"artifact/{p.name}" for p in (stage / "artifact").iterdir()}
    first, last = losses(stage)[0], losses(stage)[-1]
    assert last < first - 0.5, losses(stage)  # first is step 1, near ln(512) = 6.2

    # the artifact is a complete HF model: plain transformers loads it and generates
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stage / "artifact")
    model = AutoModelForCausalLM.from_pretrained(stage / "artifact")
    ids = tokenizer("It was", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids.shape[1] and tokenizer.decode(out[0, ids.shape[1]:]).strip()
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert tokenizer.model_max_length == model.config.max_position_embeddings  # not a new BPE's placeholder

    # continued pretraining started from pre's weights and tokenizer, found through pre's manifest
    more = read_manifest(StageDirs(tmp_path / "run" / "more"))
    assert more["inputs"]["model"] == {"stage": "pre", "fingerprint": manifest["fingerprint"],
                                       "artifact": str(stage / "artifact")}
    assert losses(tmp_path / "run" / "more")[0] < first - 0.5  # starts from trained weights, not from scratch
    assert (tmp_path / "run" / "more" / "artifact" / "tokenizer.json").read_bytes() == \
        (stage / "artifact" / "tokenizer.json").read_bytes()

    # fully fresh: nothing launched, no new attempt log
    start = time.monotonic()
    again = rlhf("run", path)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert time.monotonic() - start < 10  # measured ~0.5 s; generous for CI
    assert sorted(p.name for p in (stage / "logs").glob("attempt-*.log")) == ["attempt-1.log"]

    # editing the downstream stage's data re-runs it alone, and says why
    other.write_text(other.read_text() + "\n\nA new paragraph of text to learn from.\n")
    plan = rlhf("plan", path)
    assert "data changed: data.train.0" in plan.stdout
    rerun = rlhf("run", path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (tmp_path / "run" / "more" / "logs" / "attempt-2.log").is_file()
    assert not (stage / "logs" / "attempt-2.log").exists()
    assert read_manifest(StageDirs(stage))["fingerprint"] == manifest["fingerprint"]


def test_sigkill_then_rerun_resumes_and_matches_the_uninterrupted_weights(tmp_path, corpus):
    settings = {"max_steps": 120, "save_every": 20}
    # reference: uninterrupted, launched by hand with accelerate launch
    reference = write_pipeline(tmp_path / "reference.yaml", {"pre": pretrain_stage(corpus, **settings)},
                               run_dir="reference-run")
    done = launch_stage("stages.pretrain", "--config", reference, "--stage", "pre")
    assert done.returncode == 0, done.stdout + done.stderr

    # launched by hand again, the fresh stage says so and touches nothing
    files = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "reference-run").rglob("*")}
    again = launch_stage("stages.pretrain", "--config", reference, "--stage", "pre")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[pre] fresh: up to date; nothing to do" in again.stdout and "step" not in again.stdout
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "reference-run").rglob("*")} == files

    # interrupted: SIGKILL the whole `rlhf run` process group right after a checkpoint is committed
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus, **settings)})
    stage = tmp_path / "run" / "pre"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(path)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step = wait_for_checkpoint(stage, proc)
    assert re.search(r"pre\s.*running.*step \d+/120, eta", status_row(path, "pre"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until_stage_exits(stage)  # it dies at its next output line, its reader gone
    assert read_manifest(StageDirs(stage)) is None
    step = complete_checkpoints(StageDirs(stage))[-1].step  # another may have landed before the kill
    assert step < 120
    assert re.search(rf"interrupted at step {step}\b.*resumes from its checkpoint", status_row(path, "pre"))

    # a torn checkpoint after it (as if the process died while writing) must be ignored
    torn = stage / "checkpoints" / f"step-{step + 10:06d}"
    shutil.copytree(stage / "checkpoints" / f"step-{step:06d}", torn)
    (torn / CHECKPOINT_MARKER).unlink()
    (torn / "model.safetensors").write_bytes(b"truncated")

    plan = rlhf("plan", path)
    assert f"interrupted at step {step}" in plan.stdout
    resumed = rlhf("run", path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from step-{step:06d} (step {step})" in resumed.stdout
    manifest = read_manifest(StageDirs(stage))
    assert manifest["resumed_from_step"] == step and manifest["metrics"]["train/steps"] == 120
    assert not torn.exists()
    first_logged = next(int(line.split()[2].split("/")[0]) for line in resumed.stdout.splitlines()
                        if line.startswith("[pre] step "))
    assert step < first_logged <= step + 10  # continues after the checkpoint, not from 0

    expected, actual = weights(tmp_path / "reference-run" / "pre"), weights(stage)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert read_manifest(StageDirs(tmp_path / "reference-run" / "pre"))["fingerprint"] == manifest["fingerprint"]


def test_changed_config_with_stale_checkpoints_is_refused_until_restart(tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus, max_steps=200, save_every=10)})
    stage = tmp_path / "run" / "pre"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(path)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(stage, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    write_pipeline(path, {"pre": pretrain_stage(corpus, max_steps=20, save_every=10, learning_rate=1e-3)})
    refused = rlhf("run", path)
    assert refused.returncode == 2
    assert "stage pre: interrupted at step" in refused.stderr and "--restart pre" in refused.stderr
    by_hand = launch_stage("stages.pretrain", "--config", path, "--stage", "pre")
    assert by_hand.returncode != 0 and "--restart pre" in by_hand.stderr
    assert complete_checkpoints(StageDirs(stage))  # nothing was deleted

    restarted = rlhf("run", path, "--restart", "pre")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    manifest = read_manifest(StageDirs(stage))
    assert manifest["resumed_from_step"] is None and manifest["metrics"]["train/steps"] == 20


def test_a_failing_stage_exits_1_naming_the_stage_its_log_and_the_resume_command(tmp_path, corpus):
    stage = pretrain_stage(corpus)
    stage["data"]["block_size"] = 100_000  # valid config, but the corpus cannot fill one block
    path = write_pipeline(tmp_path / "p.yaml", {"pre": stage})
    result = rlhf("run", path)
    assert result.returncode == 1
    log = tmp_path / "run" / "pre" / "logs" / "attempt-1.log"
    assert f"error: stage pre failed (exit code 1); log: {log}; resume with: rlhf run {path}" in result.stderr
    assert "data.block_size 100000 leaves 0 training" in log.read_text()
    assert read_manifest(StageDirs(tmp_path / "run" / "pre")) is None
    row = status_row(path, "pre")  # the error, what happens next, where the log is
    assert re.search(r"pre\s.*failed.*leaves 0 training.*restarts from step 0", row), row
    assert json.loads((tmp_path / "run" / "pre" / "progress.json").read_text())["log"] == str(log)


def test_bf16_trains_on_a_cpu_and_fp16_is_refused_in_one_line(tmp_path, corpus):
    bf16 = write_pipeline(tmp_path / "bf16.yaml", {"pre": pretrain_stage(corpus, max_steps=4, precision="bf16")},
                          run_dir="bf16-run")
    done = rlhf("run", bf16)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = read_manifest(StageDirs(tmp_path / "bf16-run" / "pre"))
    assert manifest["metrics"]["train/steps"] == 4 and math.isfinite(manifest["metrics"]["eval/loss"])

    fp16 = write_pipeline(tmp_path / "fp16.yaml", {"pre": pretrain_stage(corpus, max_steps=4, precision="fp16")},
                          run_dir="fp16-run")
    refused = subprocess.run([sys.executable, "-m", "stages.pretrain", "--config", str(fp16), "--stage", "pre"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "error: train.precision: fp16 needs a CUDA GPU" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "fp16-run" / "pre" / "artifact").exists()


def test_corpus_sources_mix_by_weight_with_held_out_documents_taken_first(tmp_path, corpus):
    """A Parquet corpus whose text column is renamed (`columns: {content: text}`) beside a .txt file: each
    source holds out its own share before weighting, so no repeated document lands on both sides."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rows.corpus import read_documents
    from stages.pretrain.config import PretrainStage
    from stages.pretrain.stage import split_documents

    parquet = tmp_path / "web.parquet"
    pq.write_table(pa.table({"content": [f"web page {i} about gardens and roses." for i in range(40)],
                             "url": [f"u{i}" for i in range(40)]}), parquet)
    stage = pretrain_stage(corpus)
    stage["data"]["train"] = [{"path": str(corpus), "weight": 0.5},
                              {"path": str(parquet), "columns": {"content": "text"}, "weight": 2.0}]
    cfg = PretrainStage.model_validate(stage)
    train, validation = split_documents(cfg)
    web_train = [d for d in train if d.startswith("web page")]
    web_held = [d for d in validation if d.startswith("web page")]
    assert len(web_held) == 4 and len(web_train) == 2 * 36  # 10 % held out, then every document twice
    assert not set(web_held) & set(web_train)
    book = len(read_documents(corpus))
    book_held = len(validation) - len(web_held)
    assert book_held == round(0.1 * book)
    assert len(train) - len(web_train) == round(0.5 * (book - book_held))  # a seeded half of the rest
