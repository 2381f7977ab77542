"""`rlhf chat RUN_DIR STAGE`: talk to a stage's model in the terminal. The orchestrator finds the artifact
through the stage's manifest (torch-free) and hands over to `stages.common.chat_repl`, in its own process
like every stage, so that `rlhf` itself never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from core.errors import InputError
from pipeline.config import Pipeline
from pipeline.plan import stage_states
from pipeline.runner import stage_environment


def chat_model_dir(pipeline: Pipeline, stage: str) -> Path:
    """The committed causal-LM artifact of `stage`, or a one-line refusal saying why there is none."""
    if stage not in pipeline.stages:
        raise InputError(f"{stage}: no such stage in {pipeline.path} (stages: {', '.join(pipeline.stages)})")
    state = stage_states(pipeline)[stage]
    if state.manifest is None:
        raise InputError(f"{stage}: {state.state}, no model yet ({state.reason}); `rlhf run {pipeline.path}` first")
    config = state.dirs.artifact / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    if not any(name.endswith("ForCausalLM") for name in architectures):
        found = ", ".join(architectures) or "no model"
        raise InputError(f"{stage}: kind {state.kind} writes {found}, not a causal LM to chat with")
    return state.dirs.artifact


def chat(pipeline: Pipeline, stage: str, *, max_new_tokens: int, temperature: float, top_p: float,
         system: str | None = None, seed: int | None = None) -> int:
    """Run the chat loop on `stage`'s model; its exit code."""
    model_dir = chat_model_dir(pipeline, stage)
    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise InputError("--max-new-tokens must be positive, --temperature ≥ 0 and --top-p in (0, 1]")
    command = [sys.executable, "-m", "stages.common.chat_repl", str(model_dir), "--max-new-tokens",
               str(max_new_tokens), "--temperature", str(temperature), "--top-p", str(top_p)]
    if system:
        command += ["--system", system]
    if seed is not None:
        command += ["--seed", str(seed)]
    return subprocess.call(command, env=stage_environment())
