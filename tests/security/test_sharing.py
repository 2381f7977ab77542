"""A run directory received from someone else: `rlhf verify` checks every artifact against its manifest's
sha256, export copies only the files the manifest lists (never a planted symlink) after checking them, and
a weights file rewritten at the same size is stale, not fresh."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from tests.helpers import rlhf, status_row

pytestmark = pytest.mark.slow


def test_verify_and_export_trust_hashes_not_sizes_and_copy_only_listed_files(tiny_chat_run, tmp_path):
    run = tmp_path / "received"
    shutil.copytree(tiny_chat_run, run, symlinks=True)
    verified = rlhf("verify", run)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"run directory: {run.resolve()}" in verified.stdout and "ppo: ok" in verified.stdout

    secret = tmp_path / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (run / "ppo" / "artifact" / "notes.txt").symlink_to(secret)  # planted: not in the manifest
    exported = rlhf("export", run, "ppo", "--to", tmp_path / "clean")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert not (tmp_path / "clean" / "notes.txt").exists() and (tmp_path / "clean" / "model.safetensors").is_file()
    inside = rlhf("export", run, "ppo", "--to", run / "ppo" / "artifact" / "copy")
    assert inside.returncode == 2 and "inside the run directory" in inside.stderr

    cleaned = rlhf("clean", run, "--keep-artifacts")  # the copy's checkpoints, so that ppo cannot resume
    assert cleaned.returncode == 0 and (tiny_chat_run / "ppo" / "checkpoints").is_dir(), cleaned.stdout
    weights = run / "ppo" / "artifact" / "model.safetensors"
    recorded = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # the same size, other bytes
    weights.write_bytes(bytes(data))
    assert "changed content" in status_row(run, "ppo")
    os.utime(weights, ns=(recorded.st_atime_ns, recorded.st_mtime_ns))  # even with its old mtime put back:
    failed = rlhf("verify", run)
    assert failed.returncode == 1 and "ppo: artifact/model.safetensors changed content" in failed.stdout
    refused = rlhf("export", run, "ppo", "--to", tmp_path / "corrupt")
    assert refused.returncode == 2 and "does not match its manifest" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "corrupt").exists()


def test_an_export_names_no_local_path_and_is_readable_by_the_group(tiny_chat_run, tmp_path):
    folder = tmp_path / "lora"
    done = rlhf("export", tiny_chat_run, "ppo_lora", "--to", folder)
    assert done.returncode == 0, done.stdout + done.stderr
    card = (folder / "README.md").read_text()
    assert str(tiny_chat_run.parent) not in card and "/tmp/" not in card and "a local model" in card
    adapter = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] is None  # trained from a local model: no path of this machine
    umask = os.umask(0)
    os.umask(umask)
    for weights in (tiny_chat_run / "ppo_lora" / "artifact" / "model.safetensors", folder / "model.safetensors"):
        assert stat.S_IMODE(weights.stat().st_mode) == 0o666 & ~umask, weights  # as any new file (safetensors: 0600)
