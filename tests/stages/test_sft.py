"""The SFT stage: answer-only labels at the token level, and a real tiny run (plain and LoRA) through `rlhf run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.layout import StageDirs
from core.manifest import read_manifest
from core.progress import StageProgress
from rows.records import sft_row
from stages.common.chat import DEFAULT_CHAT_TEMPLATE, ChatRows
from stages.common.entry import StageContext
from stages.sft.config import SftStage
from tests.helpers import REPO, small_corpus

SFT_DATA = REPO / "data" / "sft"
ROWS_FILE = SFT_DATA / "python-faq" / "train.jsonl"
ROWS = [sft_row(json.loads(line)) for line in (SFT_DATA / "python-faq" / "train.jsonl").read_text().splitlines()[:12]]


def tiny_causal_lm(tmp_path: Path):
    """A random 2-layer Llama with a 512-token BPE trained on a small corpus (no training needed here)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from stages.pretrain.stage import train_tokenizer

    corpus = small_corpus(tmp_path).read_text().split("\n\n")
    tokenizer = train_tokenizer(corpus, 512, 2)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config), tokenizer


def sft_context(tmp_path: Path, **overrides) -> StageContext:
    config = {"kind": "sft", "model": {"path": str(tmp_path)}, "data": {"train": [str(SFT_DATA / "python-faq" / "train.jsonl")],
              "max_length": 4096}, "train": {"max_steps": 1, "batch_size": 4}, **overrides}
    cfg = SftStage.model_validate(config)
    dirs = StageDirs(tmp_path / "stage")
    return StageContext(spec={"stage": "sft", "fingerprint": "test"}, config=cfg, dirs=dirs, inputs={}, resume_from=None,
                        progress=StageProgress(dirs, "sft", "test", is_main=False))


@pytest.mark.parametrize("loss_on", ["completion", "all"])
def test_labels_mask_exactly_the_prompt_tokens(tmp_path, loss_on):
    from stages.sft.stage import build_trainer, sft_arguments

    model, tokenizer = tiny_causal_lm(tmp_path)
    rows = ChatRows(train=ROWS, validation=ROWS[:2], validation_by_source={"faq": ROWS[:2]}, skipped=0)
    ctx = sft_context(tmp_path, loss_on=loss_on)
    trainer = build_trainer(ctx, model, tokenizer, rows=rows, args=sft_arguments(ctx))
    by_text = {tokenizer.decode(ex["input_ids"]): ex for ex in trainer.train_dataset}
    assert len(by_text) == len(ROWS)
    for row in ROWS:
        prompt_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        example = by_text[full]
        ids, labels = example["input_ids"], example["labels"]
        assert ids[: len(prompt_ids)] == prompt_ids  # the prompt is a prefix of the training sequence
        if loss_on == "all":
            assert labels == ids
            continue
        assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
        assert labels[len(prompt_ids):] == ids[len(prompt_ids):]  # every answer token is trained, EOS included
        assert tokenizer.decode(labels[len(prompt_ids):]) == row["completion"][0]["content"] + tokenizer.eos_token

    # the collated batch keeps the masks and adds -100 on padding only
    batch = next(iter(trainer.get_train_dataloader()))
    assert ((batch["labels"] == -100) | (batch["labels"] == batch["input_ids"])).all()
    if "attention_mask" in batch:
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


TOOL_CALL = {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": {"word": "rose"}}}]}
CONVERSATIONS = [sft_row({"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": f"What is a rose {i}?"}, {"role": "assistant", "content": "A flower."},
    {"role": "user", "content": "Look it up."}, TOOL_CALL, {"role": "tool", "name": "lookup", "content": "a shrub"},
    {"role": "assistant", "content": f"A shrub {i}."}],
    "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}) for i in range(6)]


def trained_text(trainer, tokenizer) -> dict[str, str]:
    """Each training sequence -> the text of its trained (label != -100) tokens, as the collator builds them."""
    out = {}
    for example in trainer.train_dataset:
        batch = trainer.data_collator([example])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        out[tokenizer.decode(ids[ids != tokenizer.pad_token_id] if "attention_mask" not in batch else ids)] = \
            tokenizer.decode(ids[labels != -100])
    return out


@pytest.mark.parametrize("loss_on", ["completion", "assistant"])
def test_loss_on_assistant_trains_every_assistant_turn_and_completion_the_last(tmp_path, loss_on):
    from stages.sft.stage import build_trainer, sft_arguments

    model, tokenizer = tiny_causal_lm(tmp_path)
    rows = ChatRows(train=CONVERSATIONS, validation=CONVERSATIONS[:2], validation_by_source={"c": CONVERSATIONS[:2]},
                    skipped=0)
    ctx = sft_context(tmp_path, loss_on=loss_on)
    trainer = build_trainer(ctx, model, tokenizer, rows=rows, args=sft_arguments(ctx))
    trained = set(trained_text(trainer, tokenizer).values())
    eos = tokenizer.eos_token
    tool_call = 'Tool calls: [{"type": "function", "function": {"name": "lookup", "arguments": {"word": "rose"}}}]'
    if loss_on == "assistant":  # every assistant turn, the tool call and each end of turn; never user or tool text
        assert trained == {f"A flower.{eos}{tool_call}{eos}A shrub {i}.{eos}" for i in range(6)}
    else:
        assert trained == {f"A shrub {i}.{eos}" for i in range(6)}
    # the tools and the tool turn reach the chat template
    text = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert text.startswith('Tools:\n[{"type": "function"') and "### Tool:\na shrub" in text


def test_text_rows_train_on_every_token(tmp_path):
    from stages.sft.stage import build_trainer, sft_arguments

    model, tokenizer = tiny_causal_lm(tmp_path)
    texts = [sft_row({"text": f"Row {i}: the quick brown fox jumps over the lazy dog."}) for i in range(6)]
    rows = ChatRows(train=texts, validation=texts[:2], validation_by_source={"t": texts[:2]}, skipped=0)
    ctx = sft_context(tmp_path)
    trainer = build_trainer(ctx, model, tokenizer, rows=rows, args=sft_arguments(ctx, text_rows=True))
    for example in trainer.train_dataset:
        batch = trainer.data_collator([example])
        assert (batch["labels"][0] == batch["input_ids"][0]).all()
        assert tokenizer.decode(batch["input_ids"][0]).startswith("Row ")


def test_loss_on_assistant_is_refused_before_loading_when_the_template_has_no_generation_markers(tmp_path):
    from core.errors import InputError
    from stages.sft.stage import check_assistant_masks

    _, tokenizer = tiny_causal_lm(tmp_path)
    check_assistant_masks(tokenizer, "sft")  # ours has the markers
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(InputError, match="loss_on: assistant needs a chat template with {% generation %} markers"):
        check_assistant_masks(tokenizer, "sft")


@pytest.mark.slow
def test_sft_run_plain_and_lora(tmp_path, tiny_chat_run):
    run = tiny_chat_run
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the loss on held-out answers fell; samples from before and after were recorded
    manifest = read_manifest(StageDirs(run / "sft"))
    metrics = manifest["metrics"]
    assert metrics["eval/loss"] < metrics["eval/base_loss"] - 0.15, metrics
    assert metrics["train/steps"] == 30 and metrics["model/trainable_parameters"] == metrics["model/parameters"]
    assert len(metrics["samples"]) == 3 and {"prompt", "base", "sft"} <= set(metrics["samples"][0])
    assert len({s["prompt"] for s in metrics["samples"]}) == 3  # distinct prompts, from more than one source

    # the artifact is a causal LM whose tokenizer applies the chat template, loaded with plain transformers
    artifact = run / "sft" / "artifact"
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    model = AutoModelForCausalLM.from_pretrained(artifact)
    assert model.config.use_cache  # fast generate() for whoever loads it
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is Python?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "### User:\nWhat is Python?\n\n### Assistant:\n"
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids.shape[1]

    # LoRA: trained an adapter only; the artifact's weights equal base + adapter
    from peft import PeftModel

    lora = read_manifest(StageDirs(run / "sft_lora"))["metrics"]
    assert 0 < lora["model/trainable_parameters"] < lora["model/parameters"] / 5
    assert lora["eval/loss"] < lora["eval/base_loss"]
    base = AutoModelForCausalLM.from_pretrained(run / "pre" / "artifact")
    with torch.no_grad():
        base_logits = base(ids).logits
        with_adapter = PeftModel.from_pretrained(base, run / "sft_lora" / "artifact" / "adapter")(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run / "sft_lora" / "artifact")(ids).logits
    assert torch.allclose(with_adapter, merged, atol=1e-5)
    assert not torch.allclose(base_logits, merged, atol=1e-3)  # the adapter did something


def test_packing_puts_several_examples_in_one_sequence_and_trains(tmp_path):
    from stages.sft.stage import build_trainer, sft_arguments

    model, tokenizer = tiny_causal_lm(tmp_path)
    short = [sft_row(json.loads(line)) for line in
             (SFT_DATA / "chatterbot" / "train.jsonl").read_text().splitlines()[:64]]
    rows = ChatRows(train=short, validation=short[:4], validation_by_source={"chat": short[:4]}, skipped=0)
    ctx = sft_context(tmp_path, data={"train": [str(SFT_DATA / "chatterbot" / "train.jsonl")], "max_length": 128,
                                      "packing": True})
    trainer = build_trainer(ctx, model, tokenizer, rows=rows, args=sft_arguments(ctx))
    packed = trainer.train_dataset
    assert len(packed) < len(short) / 1.5  # short chats share 128-token sequences
    assert sum(len(row["seq_lengths"]) for row in packed) == len(short)  # every example kept, none split
    assert all(len(row["input_ids"]) <= 128 for row in packed)
    # packed examples do not attend to each other: the training loss equals the one from each example alone
    shared = next(row for row in packed if len(row["seq_lengths"]) > 1)
    batch = trainer.data_collator([shared])
    assert "attention_mask" not in batch
    with torch.no_grad():
        together = trainer.compute_loss(model, batch)
        apart = torch.cat([model(input_ids=ids.unsqueeze(0)).logits[0]
                           for ids in batch["input_ids"][0].split(shared["seq_lengths"])])
        labels = batch["labels"][0]
        expected = torch.nn.functional.cross_entropy(apart[:-1], labels[1:], ignore_index=-100)
    assert together.item() == pytest.approx(expected.item(), rel=1e-5)

    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 1 and torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_row_packed_batches_keep_packed_answers_apart_and_count_real_tokens(tmp_path):
    """Packing without flash attention: each bin is a row, and a packed answer's logits are exactly those it
    gets alone (the block-diagonal mask from position ids), so packing changes speed, not the loss."""
    from stages.sft.stage import RowPackedCollator, build_trainer, sft_arguments

    model, tokenizer = tiny_causal_lm(tmp_path)
    rows = ChatRows(train=ROWS, validation=ROWS[:2], validation_by_source={"faq": ROWS[:2]}, skipped=0)
    ctx = sft_context(tmp_path, data={"train": [str(SFT_DATA / "python-faq" / "train.jsonl")], "max_length": 512,
                                      "packing": True})
    trainer = build_trainer(ctx, model, tokenizer, rows=rows, args=sft_arguments(ctx))
    assert isinstance(trainer.data_collator, RowPackedCollator)  # SDPA here: no varlen kernel
    bins = sorted(trainer.train_dataset, key=lambda ex: -len(ex["seq_lengths"]))
    examples = [bins[0], bins[-1]]  # one bin holding several conversations, and the emptiest one
    assert len(examples[0]["seq_lengths"]) >= 2 and len(examples[0]["input_ids"]) != len(examples[1]["input_ids"])
    batch = trainer.data_collator(examples)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 2
    real = sum(len(ex["input_ids"]) for ex in examples)
    # what the Trainer's non-padding token count sees in a batch without an attention mask
    assert (batch["input_ids"] != tokenizer.pad_token_id).sum().item() == real

    model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for row, example in enumerate(examples):
            start = 0
            for length in example["seq_lengths"]:
                alone = model(input_ids=torch.tensor([example["input_ids"][start : start + length]])).logits[0]
                torch.testing.assert_close(packed[row, start : start + length], alone, atol=1e-5, rtol=1e-4)
                start += length
    # labels: the bin's own, -100 on each packed sequence's first token (nothing before it to predict from)
    # and on the padding of the shorter row
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        expected = torch.tensor(example["labels"])
        starts = torch.tensor([0] + list(torch.tensor(example["seq_lengths"]).cumsum(0)[:-1]))
        expected[starts] = -100
        assert torch.equal(batch["labels"][row, :n], expected)
        assert (batch["labels"][row, n:] == -100).all()


@pytest.mark.slow
def test_sft_from_a_hub_model_loads_it_by_revision_from_the_hf_cache(tmp_path, monkeypatch):
    """`model.hub: owner/name@revision` through `rlhf run`, served offline from a Hugging Face cache laid out
    as the Hub client writes it (no network here): the artifact is a plain HF model of the same shape, and
    the revision (a branch here) is resolved to its commit."""
    from transformers import AutoModelForCausalLM

    from core.errors import InputError
    from pipeline.config import load_pipeline
    from tests.helpers import rlhf, write_pipeline

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    model, tokenizer = tiny_causal_lm(tmp_path)
    model.save_pretrained(repo / "snapshots" / commit)
    tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "snapshots" / commit / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    stage = {"kind": "sft", "model": {"hub": "tiny-org/tiny-llama@main", "dtype": "bf16", "attn_implementation": "eager"},
             "data": {"train": [str(SFT_DATA / "chatterbot" / "train.jsonl")], "max_length": 64},
             "samples": {"count": 1, "max_new_tokens": 4}, "train": {"max_steps": 3, "batch_size": 4}}
    path = write_pipeline(tmp_path / "p.yaml", {"sft": stage})
    result = rlhf("run", path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "sft" / "artifact")
    assert tuned.config.hidden_size == model.config.hidden_size and tuned.config.vocab_size == model.config.vocab_size
    assert tuned.dtype == torch.bfloat16  # model.dtype: loaded, trained and saved in bf16
    # the branch was resolved to the commit it named, and the manifest records it
    assert read_manifest(StageDirs(tmp_path / "run" / "sft"))["metrics"]["model/hub_commit"] == commit
    # its exported card names the Hub base and the licence the base's cached card declares, offline
    from huggingface_hub import ModelCard

    exported = rlhf("export", tmp_path / "run", "sft", "--to", tmp_path / "out")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert (card.data.base_model, card.data.license, card.data.pipeline_tag) == ("tiny-org/tiny-llama", "apache-2.0",
                                                                                "text-generation")

    # the revision is required: a moving branch would change the model behind a fresh fingerprint
    stage["model"]["hub"] = "tiny-org/tiny-llama"
    write_pipeline(path, {"sft": stage})
    with pytest.raises(InputError, match=r"model\.hub.*expected owner/name@revision"):
        load_pipeline(path)


def test_epochs_instead_of_max_steps_pass_over_every_row(tmp_path):
    """`train.epochs` (TRL's and LLaMA-Factory's num_train_epochs): the Trainer counts the steps from the rows,
    here 40 chats in batches of 8; a fraction stops part-way."""
    from stages.sft.stage import build_trainer, sft_arguments

    model, tokenizer = tiny_causal_lm(tmp_path)
    chats = [sft_row(json.loads(line)) for line in (SFT_DATA / "chatterbot" / "train.jsonl").read_text().splitlines()[:40]]
    rows = ChatRows(train=chats, validation=chats[:4], validation_by_source={"chat": chats[:4]}, skipped=0)
    for epochs, steps in ((1, 5), (0.5, 3)):
        (tmp_path / str(epochs)).mkdir()
        ctx = sft_context(tmp_path / str(epochs), data={"train": [str(SFT_DATA / "chatterbot" / "train.jsonl")],
                                                        "max_length": 128}, train={"epochs": epochs, "batch_size": 8})
        trainer = build_trainer(ctx, model, tokenizer, rows=rows, args=sft_arguments(ctx))
        trainer.train()
        assert trainer.state.global_step == steps, epochs
    with pytest.raises(ValueError, match="exactly one of max_steps and epochs"):
        SftStage.model_validate({"kind": "sft", "model": {"path": str(tmp_path)}, "data": {"train": [str(ROWS_FILE)]},
                                 "train": {"max_steps": 3, "epochs": 1}})
