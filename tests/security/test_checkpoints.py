"""Resuming from a run directory someone else wrote runs none of their code: PPO's own loop state is JSON and
a planted accelerate custom object (which accelerate would unpickle with `weights_only=False`) is refused
unread, and a checkpoint file that torch's restricted unpickler refuses (DeepSpeed reloads its `*.pt` files
with full pickle) stops the resume."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from core.checkpoints import complete_checkpoints
from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import killed_ppo_run, rlhf

pytestmark = pytest.mark.slow


class _Payload:
    """Unpickling it creates `marker`: what a crafted checkpoint would do with a shell command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mknod, (self.marker,))


def test_ppo_refuses_planted_pickles_unread_and_resumes_without_them(tmp_path, tiny_chat_run):
    path, step = killed_ppo_run(tmp_path, tiny_chat_run)
    run = tmp_path / "run"
    checkpoint = complete_checkpoints(StageDirs(run / "ppo"))[-1].path
    assert json.loads((checkpoint / "loop-state.json").read_text())["kl"]["value"] == pytest.approx(0.02)

    marker = tmp_path / "code-ran"
    torch.save({"value": _Payload(str(marker))}, checkpoint / "custom_checkpoint_0.pkl")
    unsafe = checkpoint / "pytorch_model" / "mp_rank_00_model_states.pt"
    unsafe.parent.mkdir()
    torch.save({"module": {}, "ds_config": _Payload(str(marker))}, unsafe)
    refused = rlhf("run", path, "--only", "ppo")
    assert refused.returncode != 0
    assert f"{unsafe}: refusing to resume from it" in refused.stdout + refused.stderr
    assert "posix.mknod" in refused.stdout + refused.stderr and not marker.exists()

    shutil.rmtree(unsafe.parent)
    stray = rlhf("run", path, "--only", "ppo")
    assert stray.returncode != 0 and "custom_checkpoint_0.pkl: a pickled accelerate custom object" in stray.stdout
    assert not marker.exists()

    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    done = rlhf("run", path, "--only", "ppo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[ppo] resuming from step-{step:06d}" in done.stdout
    assert read_manifest(StageDirs(run / "ppo"))["resumed_from_step"] == step
    assert not marker.exists()
