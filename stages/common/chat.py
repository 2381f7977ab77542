"""What the chat stages (sft, reward, ppo) share: the input model, the chat template, data rows, sampling.

Our default chat template uses plain-text role headers and the tokenizer's own EOS, so it adds no tokens:
any tokenizer (our tiny BPE, SmolLM2's, Llama's) can take it without resizing embeddings, and LoRA needs
no trainable embedding rows. The assistant's text and its EOS sit inside `{% generation %}` so assistant
masks cover the end of turn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, Features, Json, Value

from core.errors import InputError
from rows.datasources import DataSource
from rows.records import read_rows
from stages.common.entry import StageContext
from stages.common.hf_models import DEFAULT_LOADING, Loading, load_config, load_tokenizer, model_ref, resolve_hub

DEFAULT_CHAT_TEMPLATE = (
    "{%- if tools -%}{{ 'Tools:\n' + (tools | tojson) + '\n\n' }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'tool' -%}{{ '### Tool:\n' + message['content'] + '\n\n' }}"
    "{%- else -%}{{ '### Assistant:\n' }}{% generation %}{{ message['content'] }}"
    "{%- if message.get('tool_calls') -%}"
    "{{ ('\n' if message['content'] else '') + 'Tool calls: ' + (message['tool_calls'] | tojson) }}"
    "{%- endif -%}{{ eos_token }}{% endgeneration %}"
    "{{ '\n\n' if not loop.last else '' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Assistant:\n' }}{%- endif -%}"
)
#: the columns of normalised rows that hold plain strings; every other one (messages, above all) is Json
STRING_COLUMNS = ("text", "tools")


def input_model(ctx: StageContext):
    """The model the stage starts from: the upstream stage's artifact, `model.path`, `model.gguf` or
    `model.hub` pinned to its commit (see stages.common.hf_models.ModelRef)."""
    return ctx.inputs.get("model") or resolve_hub(model_ref(ctx.config.model.source()))


def load_chat_tokenizer(source: Path, chat_template: str, loading: Loading = DEFAULT_LOADING):
    """The tokenizer at `source` with a pad token and the chat template the config asks for."""
    tokenizer = load_tokenizer(source, loading)
    if tokenizer.eos_token is None:
        raise InputError(f"{source}: the tokenizer has no eos_token; a chat model needs one to end its answers")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template == "default" or (chat_template == "auto" and not tokenizer.chat_template):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    elif chat_template != "auto":
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
    return tokenizer


def weighted(rows: list, weight: float, rng: random.Random) -> list:
    """`weight` x the rows: whole copies, then a seeded sample for the fraction."""
    whole, fraction = divmod(weight, 1.0)
    extra = rng.sample(rows, round(fraction * len(rows)))
    return rows * int(whole) + extra


@dataclass
class ChatRows:
    """A stage's data: training rows mixed by weight, held-out rows (also by source), bad rows skipped."""

    train: list[dict]
    validation: list[dict]
    validation_by_source: dict[str, list[dict]]
    skipped: int


def source_label(source: DataSource, sources: list[DataSource]) -> str:
    """A short name for a data source: a file's folder (data/reward/wordnet/heldout.jsonl -> wordnet; a
    stage's artifact file -> the stage), or folder/stem when two files share a folder; a Hub dataset's name."""
    if source.hub is not None:
        return source.hub.rpartition("@")[0].split("/")[-1]
    p = Path(source.path)
    folder = p.parent.parent.name if p.parent.name == "artifact" else p.parent.name  # a stage's artifact: the stage
    if sum(s.path is not None and Path(s.path).parent == p.parent for s in sources) > 1:
        return f"{folder}/{p.stem}"
    return folder


def load_rows(data, parse, seed: int, *, skip_bad_rows: bool = False) -> ChatRows:
    """Read a ChatData section. Without validation files, a seeded `validation_fraction` of each training
    file is held out (before weighting, so a repeated row never lands on both sides)."""
    rng = random.Random(seed)
    skipped = 0

    def read(source) -> list[dict]:
        nonlocal skipped
        rows, bad = read_rows(source, parse, skip_bad_rows)
        skipped += len(bad)
        return rows

    per_file = [read(source) for source in data.train]
    if data.validation:
        by_source = {source_label(source, data.validation): read(source) for source in data.validation}
    else:
        by_source = {}
        for i, rows in enumerate(per_file):
            order = list(range(len(rows)))
            rng.shuffle(order)
            held = set(order[: max(1, round(len(rows) * data.validation_fraction))])
            by_source[source_label(data.train[i], data.train)] = [r for j, r in enumerate(rows) if j in held]
            per_file[i] = [r for j, r in enumerate(rows) if j not in held]
    train = [row for rows, source in zip(per_file, data.train) for row in weighted(rows, source.weight, rng)]
    validation = [row for rows in by_source.values() for row in rows]
    if not train or not validation:
        raise InputError(f"data: {len(train)} training and {len(validation)} validation rows; expected some of each")
    return ChatRows(train, validation, by_source, skipped)


def chat_dataset(rows: list[dict]) -> Dataset:
    """Normalised rows as a `datasets.Dataset` for TRL. Message columns use the Json feature, so each message
    keeps exactly its own keys (Arrow structs would give every message every key, None where it had none,
    and chat templates test `message.tool_calls is defined`)."""
    columns = sorted({key for row in rows for key in row})
    features = Features({key: Value("string") if key in STRING_COLUMNS else Json() for key in columns})
    return Dataset.from_list([{key: row.get(key) for key in columns} for row in rows], features=features)


def interleaved(by_source: dict[str, list[dict]]) -> list[dict]:
    """Rows taken in turn from each source (a, b, c, a, b, c, ...), so any prefix mixes all sources."""
    queues = [list(rows) for rows in by_source.values()]
    out = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def check_context_length(model_dir: Path, needed: int, what: str, *, loading: Loading = DEFAULT_LOADING) -> None:
    """Refuse sequences longer than the model's position range (`what` names the settings that add up)."""
    limit = getattr(load_config(model_dir, loading).get_text_config(), "max_position_embeddings", None)
    if limit is not None and needed > limit:
        raise InputError(f"{what} = {needed} tokens exceeds the model's max_position_embeddings ({limit}) of {model_dir}")


def sample_prompts(rows: ChatRows, count: int) -> list[list[dict]]:
    """`count` distinct held-out prompts, taken in turn from each source: the fixed prompts that every
    stage answers, so the report can compare base, SFT and PPO answers."""
    chosen, seen = [], set()
    for row in interleaved(rows.validation_by_source):
        if len(chosen) == count:
            break
        if "prompt" in row and repr(row["prompt"]) not in seen:  # text rows have none
            seen.add(repr(row["prompt"]))
            chosen.append(row["prompt"])
    return chosen


def generate_answers(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers to chat prompts (left-padded batches, KV cache, stop at EOS)."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[start : start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [a.strip() for a in answers]


