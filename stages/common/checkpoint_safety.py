"""Resuming from a checkpoint someone else wrote without running their code.

DeepSpeed reloads its checkpoint files (`*.pt`) with full pickle (`torch.load(weights_only=False)`), so a
planted file in a received run directory would run arbitrary code on resume. Before any library reads a
checkpoint, every `*.pt` file in it is opened with torch's restricted unpickler (`weights_only=True`,
memory-mapped, so tensors are not read): it accepts tensors, containers and primitives, plus the few
DeepSpeed classes its checkpoints hold, and refuses any other global. A file that passes holds nothing that
executes when the library unpickles it again.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from core.errors import InputError


def _deepspeed_globals() -> list:
    """The classes DeepSpeed's ZeRO checkpoints pickle (empty when DeepSpeed is not installed)."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def refuse_unsafe_pickles(checkpoint: Path, *, stage: str) -> None:
    """Raise InputError naming the first `*.pt` file under `checkpoint` that the restricted unpickler refuses
    (a global other than tensors, containers and DeepSpeed's checkpoint classes)."""
    allowed = _deepspeed_globals()
    for path in sorted(checkpoint.rglob("*.pt")):
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as refused:
            lines = [line for line in str(refused).splitlines() if "GLOBAL" in line or "global" in line]
            reason = lines[0].strip().rstrip(".") if lines else "a global torch does not load safely"
            raise InputError(f"{path}: refusing to resume from it: it is not plain tensors and settings, and "
                             f"loading it would run code ({reason}); re-run with --restart {stage} to start the stage "
                             "afresh") from None
