"""The PPO stage in a real tiny run: the held-out reward rises, the KL stays bounded, artifacts reload,
and SIGKILL + re-run ends with the uninterrupted weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from core.history import read_history
from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import PPO_ITERATIONS, killed_ppo_run, rlhf

pytestmark = pytest.mark.slow

KL_BOUND = 5.0  # nats per answer: beta = 0.02 keeps a 12-iteration run well inside it


def test_ppo_raises_the_held_out_reward_and_stays_near_the_sft_policy(tiny_chat_run):
    manifest = read_manifest(StageDirs(tiny_chat_run / "ppo"))
    metrics = manifest["metrics"]
    assert manifest["inputs"]["model"]["stage"] == "sft" and manifest["inputs"]["reward"]["stage"] == "rm"
    assert metrics["eval/ppo_score"] > metrics["eval/sft_score"], metrics
    assert metrics["eval/win_rate"] > 0.5
    assert 0 <= metrics["eval/kl"] < KL_BOUND
    assert metrics["eval/prompts"] == 32 and metrics["eval/gold_prompts"] == 16  # prompts interleaved by source
    assert 0 <= metrics["eval/gold_win_rate"] <= 1
    # the numbers that do not flatter, per policy, and intervals on both win rates
    assert metrics["eval/win_rate_low"] <= metrics["eval/win_rate"] <= metrics["eval/win_rate_high"]
    assert metrics["eval/gold_win_rate_low"] <= metrics["eval/gold_win_rate"] <= metrics["eval/gold_win_rate_high"]
    for policy in ("sft", "ppo"):
        assert 0 <= metrics[f"eval/{policy}_stop_rate"] <= 1 and 0 < metrics[f"eval/{policy}_distinct_2"] <= 1
        assert 1 <= metrics[f"eval/{policy}_length"] <= 16  # generation.max_new_tokens
    # the sample table: greedy answers to the SFT stage's sample prompts (with its base answers), topped up
    samples, sft_samples = metrics["samples"], read_manifest(StageDirs(tiny_chat_run / "sft"))["metrics"]["samples"]
    assert len(samples) == 4 and [s["prompt"] for s in samples[:3]] == [s["prompt"] for s in sft_samples]
    assert [s["base"] for s in samples[:3]] == [s["base"] for s in sft_samples]
    for row in samples:
        assert {"prompt", "sft", "ppo", "sft_score", "ppo_score"} <= set(row)
    assert all(isinstance(s["base_score"], float) for s in samples[:3]) and "base" not in samples[3]
    assert 0 < metrics["time/generate_share"] < 1 and metrics["train/iterations"] == PPO_ITERATIONS

    # one metrics line per iteration with the documented quantities, and tensorboard events
    records = read_history(tiny_chat_run / "ppo" / "logs" / "metrics.jsonl")
    lines = [r for r in records if "score/mean" in r]
    assert [line["step"] for line in lines] == list(range(1, PPO_ITERATIONS + 1))
    for key in ("score/mean", "kl/mean", "kl/beta", "policy/entropy", "policy/loss", "value/loss", "policy/clip_fraction",
                "policy/approx_kl", "response/length", "ptx/loss", "time/generate", "time/score", "time/train"):
        assert key in lines[-1], key
    assert list((tiny_chat_run / "ppo" / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_ppo_artifact_is_a_causal_lm_with_its_critic(tiny_chat_run):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    artifact = tiny_chat_run / "ppo" / "artifact"
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    policy = AutoModelForCausalLM.from_pretrained(artifact)
    critic = AutoModelForSequenceClassification.from_pretrained(artifact / "critic")
    assert critic.config.num_labels == 1 and policy.config.use_cache
    ids = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                                  add_generation_prompt=True), return_tensors="pt").input_ids
    assert policy.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id).shape[1] > ids.shape[1]
    # PPO changed the policy (and the critic) it started from
    sft = load_file(tiny_chat_run / "sft" / "artifact" / "model.safetensors")
    ppo = load_file(artifact / "model.safetensors")
    assert any(not torch.equal(sft[k], ppo[k]) for k in sft)
    rm = load_file(tiny_chat_run / "rm" / "artifact" / "model.safetensors")
    value = load_file(artifact / "critic" / "model.safetensors")
    assert any(not torch.equal(rm[k], value[k]) for k in rm)


def test_ppo_with_lora_saves_the_merged_policy_and_its_adapter(tiny_chat_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    artifact = tiny_chat_run / "ppo_lora" / "artifact"
    ids = torch.tensor([[5, 17, 33, 2, 90, 41]])
    with torch.no_grad():
        sft = AutoModelForCausalLM.from_pretrained(tiny_chat_run / "sft" / "artifact")
        base_logits = sft(ids).logits
        with_adapter = PeftModel.from_pretrained(sft, artifact / "adapter")(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(artifact)(ids).logits
    assert torch.allclose(with_adapter, merged, atol=1e-5)
    assert not torch.allclose(base_logits, merged, atol=1e-4)
    assert (artifact / "critic" / "model.safetensors").is_file()


def test_ppo_resumes_after_sigkill_with_the_uninterrupted_weights(tmp_path, tiny_chat_run):
    path, step = killed_ppo_run(tmp_path, tiny_chat_run)
    run = tmp_path / "run"
    assert step < PPO_ITERATIONS
    done = rlhf("run", path, "--only", "ppo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[ppo] resuming from step-{step:06d}" in done.stdout
    manifest = read_manifest(StageDirs(run / "ppo"))
    assert manifest["resumed_from_step"] == step
    for name in ("model.safetensors", "critic/model.safetensors"):
        expected = load_file(tiny_chat_run / "ppo" / "artifact" / name)
        actual = load_file(run / "ppo" / "artifact" / name)
        for key in expected:
            assert torch.equal(expected[key], actual[key]), (name, key)
    reference = read_manifest(StageDirs(tiny_chat_run / "ppo"))["metrics"]
    for key in ("eval/sft_score", "eval/ppo_score", "eval/kl", "eval/win_rate", "train/first_score", "train/last_score"):
        assert manifest["metrics"][key] == reference[key], key


def test_ppo_evaluates_along_the_way_with_the_proxy_and_an_independent_judge(tiny_chat_run):
    """evaluation.every = 4 with a rule judge: held-out points before the first iteration and every 4, and the
    final comparison by the judge beside the proxy's."""
    records = read_history(tiny_chat_run / "ppo" / "logs" / "metrics.jsonl")
    points = [r for r in records if "heldout/proxy_score" in r]
    assert [p["step"] for p in points] == list(range(0, PPO_ITERATIONS + 1, 4))
    assert abs(points[0]["heldout/kl"]) < 1e-4  # before training the policy is the reference
    assert max(p["heldout/kl"] for p in points[1:]) > 1e-3  # and then it moves
    for point in points:
        assert 0 <= point["heldout/judge_score"] <= 1  # word-overlap F1
        assert 0 <= point["heldout/stop_rate"] <= 1 and 1 <= point["heldout/length"] <= 16
    metrics = read_manifest(StageDirs(tiny_chat_run / "ppo"))["metrics"]
    assert metrics["eval/judge_win_rate_low"] <= metrics["eval/judge_win_rate"] <= metrics["eval/judge_win_rate_high"]
    assert 0 <= metrics["eval/sft_judge_score"] <= 1 and 0 <= metrics["eval/ppo_judge_score"] <= 1

