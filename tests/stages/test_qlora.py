"""QLoRA through `rlhf run` on CPU (bitsandbytes' CPU backend): sft, reward, dpo, grpo and ppo train a LoRA adapter on a
4-bit (or 8-bit) base; their artifacts are plain models that compute what the quantized model with its adapter
computes; a killed QLoRA stage (the Trainer's and PPO's) resumes to the weights of an uninterrupted one. The
refusals before launch are in tests/unit/test_config.py."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import (
    DATA,
    kill_during,
    ppo_stage,
    pretrain_stage,
    ranking_subset,
    reward_stage,
    rlhf,
    sft_stage,
    small_corpus,
    word_salad_pairs,
    write_pipeline,
)
from tests.stages.test_dpo import dpo_stage
from tests.stages.test_group_rl import BREVITY, group_stage

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                                   reason="pip install bitsandbytes")]


def quantized(stage: dict, **quantization) -> dict:
    """`stage` with a LoRA adapter on its model loaded quantized."""
    stage["lora"] = {"r": 8, "alpha": 16}
    stage.setdefault("model", {})["quantization"] = quantization
    return stage


def test_sft_dpo_and_grpo_train_an_adapter_on_a_quantized_base_and_save_plain_models(tmp_path, tiny_chat_run):
    sft = quantized(sft_stage("pre", max_steps=10, learning_rate=1e-2, save_every=2), bits=4, compute_dtype="fp32")
    sft["inputs"] = {}
    sft["model"]["path"] = str(tiny_chat_run / "pre" / "artifact")
    pairs = word_salad_pairs(tmp_path / "pairs.jsonl"), word_salad_pairs(tmp_path / "heldout.jsonl", "heldout")
    dpo = quantized(dpo_stage(tiny_chat_run / "sft" / "artifact", *pairs, max_steps=6, learning_rate=1e-2), bits=8)
    grpo = quantized(group_stage("grpo", tiny_chat_run, max_steps=2, learning_rate=1e-2), bits=4)
    grpo.update(reward_rule=BREVITY, evaluation_prompts=4)
    rm = quantized(reward_stage("x", ranking_subset(tmp_path / "rankings.jsonl"), max_steps=20, save_every=10,
                                learning_rate=1e-2, warmup_steps=0), bits=4, compute_dtype="fp32")
    rm["inputs"] = {}
    rm["model"]["path"] = str(tiny_chat_run / "pre" / "artifact")
    path = write_pipeline(tmp_path / "p.yaml", {"sft_q": sft, "dpo_q": dpo, "grpo_q": grpo, "rm_q": rm,
                                                "sft_q_resume": sft})
    result = rlhf("run", path, "--only", "sft_q", "dpo_q", "grpo_q", "rm_q")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "kernels-community" not in result.stdout + result.stderr  # bitsandbytes' failed Hub fetch stays quiet
    # sft answers before training in eval mode; a 4-bit weight repacked for bitsandbytes' CPU inference kernel then
    # trained through a kernel with no backward (torch warns), and the adapter's gradients were wrong
    assert "autograd kernel was not registered" not in result.stdout + result.stderr
    run = tmp_path / "run"

    whole = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_chat_run / "pre" / "artifact").parameters())
    for name in ("sft_q", "dpo_q", "grpo_q", "rm_q"):
        metrics = read_manifest(StageDirs(run / name))["metrics"]
        if name != "rm_q":
            assert metrics["model/parameters"] == whole, name  # 4-bit weights (two a byte) counted whole
            assert 0 < metrics["model/trainable_parameters"] < whole / 5, name
        config = json.loads((run / name / "artifact" / "config.json").read_text())
        assert "quantization_config" not in config, name  # a plain model, for the next stage and for anyone
        assert (run / name / "artifact" / "adapter" / "adapter_config.json").is_file(), name
    sft_metrics = read_manifest(StageDirs(run / "sft_q"))["metrics"]
    assert sft_metrics["eval/loss"] < sft_metrics["eval/base_loss"]

    # the plain artifact computes what the quantized base with the trained adapter computes (plain transformers,
    # peft and bitsandbytes, none of our code), and the adapter changed it
    tokenizer = AutoTokenizer.from_pretrained(run / "sft_q" / "artifact")
    ids = tokenizer("What is Python? It is a language", return_tensors="pt").input_ids
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_run / "pre" / "artifact", quantization_config=four_bit,
                                                device_map="cpu")
    with torch.no_grad():
        before = base(ids).logits
        trained = PeftModel.from_pretrained(base, run / "sft_q" / "artifact" / "adapter")(ids).logits
        artifact = AutoModelForCausalLM.from_pretrained(run / "sft_q" / "artifact")(ids).logits
    assert torch.allclose(artifact, trained, atol=2e-2), (artifact - trained).abs().max()
    assert (artifact - before).abs().max() > 0.1

    # the reward model: its adapter and new head learned the rankings; the plain classifier scores as the 4-bit
    # base with the adapter (and the head peft kept beside it) does
    rm_metrics = read_manifest(StageDirs(run / "rm_q"))["metrics"]
    assert rm_metrics["eval/pairwise_accuracy"] > rm_metrics["eval/base_pairwise_accuracy"]
    classifier = AutoModelForSequenceClassification.from_pretrained(
        tiny_chat_run / "pre" / "artifact", num_labels=1, quantization_config=four_bit, device_map="cpu")
    classifier.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        expected = PeftModel.from_pretrained(classifier, run / "rm_q" / "artifact" / "adapter")(ids).logits
        scored = AutoModelForSequenceClassification.from_pretrained(run / "rm_q" / "artifact")(ids).logits
    assert torch.allclose(scored, expected, atol=2e-2), (scored, expected)

    # killed after a checkpoint and resumed (the Trainer's resume): the adapter of the uninterrupted run
    assert 0 < kill_during(run / "sft_q_resume", path, "--only", "sft_q_resume") < 10
    again = rlhf("run", path, "--only", "sft_q_resume")
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    whole, resumed = (load_file(run / name / "artifact" / "adapter" / "adapter_model.safetensors")
                      for name in ("sft_q", "sft_q_resume"))
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_ppo_trains_an_adapter_on_a_quantized_policy_and_a_killed_run_resumes_to_the_same_weights(tmp_path,
                                                                                                  tiny_chat_run):
    run = tmp_path / "run"
    for stage in ("pre", "sft", "rm"):
        shutil.copytree(tiny_chat_run / stage, run / stage)
    ppo = quantized(ppo_stage("sft", "rm", small_corpus(tmp_path), max_steps=4, save_every=2, learning_rate=1e-2),
                    bits=4)
    ppo["evaluation"] = {"prompts": 8, "samples": 2}
    stages = {"pre": pretrain_stage(small_corpus(tmp_path)), "sft": sft_stage("pre"),
              "rm": reward_stage("sft", ranking_subset(tmp_path / "rankings.jsonl")), "ppo_q": ppo, "ppo_q_resume": ppo}
    path = write_pipeline(tmp_path / "p.yaml", stages)
    result = rlhf("run", path, "--only", "ppo_q")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = read_manifest(StageDirs(run / "ppo_q"))["metrics"]
    assert metrics["eval/kl"] > 0  # the policy moved away from the reference (its adapter switched off)
    assert "quantization_config" not in json.loads((run / "ppo_q" / "artifact" / "config.json").read_text())
    tuned, start = (load_file(run / name / "artifact" / "model.safetensors") for name in ("ppo_q", "sft"))
    assert any(not torch.equal(tuned[key], start[key]) for key in start)

    # killed after its first checkpoint, resumed: the adapter and the critic of the uninterrupted run
    assert 0 < kill_during(run / "ppo_q_resume", path, "--only", "ppo_q_resume") < 4
    again = rlhf("run", path, "--only", "ppo_q_resume")
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    for weights in ("adapter/adapter_model.safetensors", "critic/model.safetensors", "model.safetensors"):
        whole, resumed = (load_file(run / name / "artifact" / weights) for name in ("ppo_q", "ppo_q_resume"))
        assert all(torch.equal(whole[key], resumed[key]) for key in whole), weights


def test_qlora_sft_on_smollm2_whose_pad_is_its_eos_saves_what_it_trained(tmp_path, smollm2_dir):
    stage = quantized({"kind": "sft", "model": {"path": str(smollm2_dir)},
                       "data": {"train": [str(DATA / "sft" / "python-faq" / "train.jsonl")],
                                "validation": [str(DATA / "sft" / "python-faq" / "heldout.jsonl")], "max_length": 48},
                       "samples": {"count": 1, "max_new_tokens": 4},
                       "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "precision": "bf16"}}, bits=4)
    result = rlhf("run", write_pipeline(tmp_path / "p.yaml", {"sft_q": stage}))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = read_manifest(StageDirs(tmp_path / "run" / "sft_q"))["metrics"]
    assert metrics["eval/loss"] < metrics["eval/base_loss"]

    artifact = tmp_path / "run" / "sft_q" / "artifact"
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    assert tokenizer.pad_token == tokenizer.eos_token  # SmolLM2's: what the tiny tokenizer would hide
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is a Python list?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, quantization_config=four_bit, device_map="cpu")
    trained = PeftModel.from_pretrained(base, artifact / "adapter")
    trained.train()  # no dropout here; train mode keeps bitsandbytes off its bf16 CPU inference kernel
    with torch.no_grad():
        expected = trained(ids).logits
        saved = AutoModelForCausalLM.from_pretrained(artifact)(ids).logits
    assert torch.allclose(saved, expected, atol=1e-2), (saved - expected).abs().max()
