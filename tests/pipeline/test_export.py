"""`rlhf export`: a clean model folder (weights, tokenizer, adapter, no critic) with a model card built from
the manifests' lineage; never over an existing folder; the Hub upload tried offline up to its call."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import rlhf

pytestmark = pytest.mark.slow


def test_a_ppo_stage_exports_as_a_plain_model_folder_with_its_lineage(tiny_chat_run, tmp_path):
    folder = tmp_path / "ppo-model"
    done = rlhf("export", tiny_chat_run, "ppo", "--to", folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (folder / "critic").exists() and (folder / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and sum(p.numel() for p in model.parameters()) > 100_000
    card = (folder / "README.md").read_text()
    for stage in ("ppo", "sft", "rm", "pre"):  # the stage and every stage it was built from
        manifest = read_manifest(StageDirs(tiny_chat_run / stage))
        assert manifest["fingerprint"] in card, stage
        for data_file in manifest["data_files"]:
            assert data_file["sha256"] in card
    assert "| eval/kl | " in card and '"rollout_batch_size": 8' in card
    data = ModelCard.load(folder / "README.md").data  # the Hub's own card format, read back by its client
    assert data.pipeline_tag == "text-generation" and data.library_name == "transformers" and "ppo" in data.tags
    assert data.base_model is None and 'pipeline("text-generation", model="ppo")' in card  # local base; usage
    assert tokenizer.model_max_length == model.config.max_position_embeddings
    reward = tmp_path / "rm-model"
    assert rlhf("export", tiny_chat_run, "rm", "--to", reward).returncode == 0
    assert ModelCard.load(reward / "README.md").data.pipeline_tag == "text-classification"


def test_an_adapter_comes_along_and_nothing_is_overwritten_or_exported_without_a_model(tiny_chat_run, tmp_path):
    lora = tmp_path / "lora"
    assert rlhf("export", tiny_chat_run, "ppo_lora", "--to", lora).returncode == 0
    assert (lora / "adapter" / "adapter_config.json").is_file()
    again = rlhf("export", tiny_chat_run, "ppo_lora", "--to", lora)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    rows = rlhf("export", tiny_chat_run, "samples", "--to", tmp_path / "rows")
    assert rows.returncode == 2 and "kind sample writes no model to export" in rows.stderr


def test_push_to_hub_is_attempted_after_the_folder_is_written(tiny_chat_run, tmp_path):
    folder = tmp_path / "to-push"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", str(tiny_chat_run), "sft", "--to",
                             str(folder), "--push-to-hub", "someone/tiny-sft", "--private"], capture_output=True,
                            text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    assert result.returncode == 1 and (folder / "README.md").is_file()
    assert "--push-to-hub someone/tiny-sft: OfflineModeIsEnabled" in result.stderr
