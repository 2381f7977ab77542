"""`rlhf env` and `rlhf --version`: what a bug report needs to say about this machine (as `trl env` does)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata

from core.engines import VLLM_PYTHON_VARIABLE, vllm_problem, vllm_python
from core.manifest import versions


def package_version() -> str:
    """This package's installed version."""
    try:
        return metadata.version("rlhf-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


#: run in a child process: the devices need torch, which the CLI itself never imports
_DEVICES = """import json, torch
cuda = torch.cuda.is_available()
print(json.dumps({"cuda": cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                  "cuda_version": torch.version.cuda, "cpu_threads": torch.get_num_threads(),
                  "bf16": torch.cuda.is_bf16_supported() if cuda else None}))"""


def environment() -> dict[str, str]:
    """rlhf-pipeline, Python, the platform, the library versions that shape results, and the devices."""
    found = {"rlhf-pipeline": package_version(), "python": sys.version.split()[0], "platform": platform.platform(),
             "cpus": str(os.cpu_count())}
    found |= {name: version or "not installed" for name, version in versions().items()}
    probe = subprocess.run([sys.executable, "-c", _DEVICES], capture_output=True, text=True, timeout=120)
    if probe.returncode == 0:
        devices = json.loads(probe.stdout)
        found["devices"] = ", ".join(devices["gpus"]) if devices["gpus"] else f"CPU only ({devices['cpu_threads']} threads)"
        found["cuda"] = devices["cuda_version"] or "none"
    else:
        found["devices"] = "unknown: torch failed to import (" + (probe.stderr.strip().splitlines() or ["?"])[-1] + ")"
    problem = vllm_problem()
    found["vllm engine"] = f"usable, from {vllm_python()}" if problem is None else f"not usable: {problem}"
    for variable in ("CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "HF_HOME", "ACCELERATE_CONFIG_FILE", VLLM_PYTHON_VARIABLE):
        if variable in os.environ:
            found[variable] = os.environ[variable]
    return found
