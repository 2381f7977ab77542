"""What the launches a stage may get say about themselves (torch-free: `rlhf plan` and the stages share it)."""

from __future__ import annotations

import os
from pathlib import Path

#: why a stage refuses an FSDP launch, for `rlhf plan` and for a stage launched by hand
FSDP_REFUSAL = ("no stage kind runs under FSDP yet: accelerate engages FSDP only on GPUs (a CPU launch runs plain "
                "DDP instead), where no kind has been tested under it; shard with DeepSpeed ZeRO-3 "
                "(configs/accelerate/zero3.yaml, or zero3_cpu.yaml on CPU)")


def fsdp_requested() -> bool:
    """Whether `accelerate launch` was given an FSDP config (it tells the processes through the environment)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


#: why a QLoRA stage refuses a DeepSpeed launch (plan time, and a stage launched by hand)
QLORA_UNDER_DEEPSPEED = ("QLoRA is not run under DeepSpeed here (untested with ZeRO's partitioning); launch the "
                         "stage with one process or DDP (configs/accelerate/ddp.yaml)")


def deepspeed_requested() -> bool:
    """Whether `accelerate launch` was given a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def cuda_visible_here() -> bool:
    """Whether this machine shows a CUDA (or ROCm) GPU to the stages it launches, without importing torch: an
    NVIDIA driver's GPU entries or ROCm's device node, not hidden by CUDA_VISIBLE_DEVICES."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    nvidia = Path("/proc/driver/nvidia/gpus")
    return (nvidia.is_dir() and any(nvidia.iterdir())) or Path("/dev/kfd").exists()


def launched_here() -> bool:
    """Whether `rlhf run` launches stages on this machine (not through RLHF_STAGE_LAUNCHER, e.g. srun)."""
    return not os.environ.get("RLHF_STAGE_LAUNCHER")
