"""sample: the policy answers each prompt K times, for labelers to rank.

    accelerate launch -m stages.sample --config configs/pipelines/tiny.yaml --stage sample

Input `policy` (an SFT-like artifact). The prompts are read from `data.prompts` (any SFT or ranking row
shape), deduplicated, and answered in chunks of `save_every` prompts: each process samples K answers to its
share of a chunk (batched `generate` with the KV cache, the answers of a prompt side by side), the main
process gathers them in prompt order and commits the rows so far as a checkpoint. A chunk's sampling is
seeded by `seed` and the chunk's first prompt, so a resumed run writes what an uninterrupted one does.

The artifact is `samples.jsonl`, a row per prompt: `{"prompt": messages, "answers": [K texts],
"stopped": [K booleans: ended with EOS], "lengths": [K token counts], "reference": text or null}`, and the
prompt's verifiable `instructions` when it has them (rows/instructions.py), for a rule labeler that checks them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from accelerate import PartialState

from core.atomic import atomic_write_json
from measures.stats import distinct_n, mean
from rows.messages import prompt_text
from rows.records import distinct_prompts
from stages.common.chat import check_context_length, load_chat_tokenizer
from stages.common.entry import StageContext
from stages.common.generation import Generator, HFGenerator, answer_prompts
from stages.common.hf_models import Loading, load_causal_lm
from stages.common.hf_trainer import quiet_libraries
from stages.common.row_checkpoints import resumable_rows, shared_work, write_rows
from stages.common.tracking import AnswerTable, log_outcome
from stages.common.vllm_engine import VLLMGenerator
from stages.sample.artifact import SAMPLES_FILE
from stages.sample.config import SampleStage


def train(ctx: StageContext) -> dict:
    """Sample K answers per prompt, resumably; write samples.jsonl; return the manifest metrics."""
    cfg: SampleStage = ctx.config
    state = PartialState()
    quiet_libraries()
    loading = Loading.of(cfg.model)
    policy_dir = ctx.inputs["model"]
    check_context_length(policy_dir, cfg.data.max_length + cfg.generation.max_new_tokens,
                         "data.max_length + generation.max_new_tokens", loading=loading)
    tokenizer = load_chat_tokenizer(policy_dir, "auto", loading)
    prompts = distinct_prompts(cfg.data.prompts, cfg.data.max_prompts)
    with policy_sampler(cfg, ctx=ctx, tokenizer=tokenizer, loading=loading, device=state.device) as sampler:
        rows = sample_rows(cfg, ctx, sampler, tokenizer=tokenizer, prompts=prompts, state=state)
    if state.is_main_process:
        ctx.staged_artifact.mkdir(parents=True)
        write_rows(ctx.staged_artifact / SAMPLES_FILE, rows)
        atomic_write_json(ctx.staged_artifact / "sampling.json",
                          {"policy_fingerprint": ctx.spec["inputs"]["model"]["fingerprint"],
                           "samples_per_prompt": cfg.samples_per_prompt, "seed": cfg.seed,
                           **cfg.generation.model_dump(exclude={"vllm"})})
    metrics = sample_metrics(rows, k=cfg.samples_per_prompt)
    if state.is_main_process:
        log_outcome(ctx, metrics, step=len(rows), tables={"samples": samples_table(rows, limit=cfg.tracking.table_rows)})
    return metrics


@contextlib.contextmanager
def policy_sampler(cfg: SampleStage, *, ctx: StageContext, tokenizer, loading: Loading, device) -> Iterator:
    """The policy's sampler for this stage: transformers' generate, or a vLLM engine (closed on exit)."""
    policy_dir, gen = ctx.inputs["model"], cfg.generation
    if gen.engine == "vllm":
        with VLLMGenerator.of(policy_dir, tokenizer, gen, max_model_len=cfg.data.max_length + gen.max_new_tokens,
                              dtype=cfg.model.dtype if cfg.model else None, seed=cfg.seed,
                              log_prefix=ctx.name) as engine:
            yield engine
        return
    model = load_causal_lm(policy_dir, loading).to(device)
    yield HFGenerator(lambda: contextlib.nullcontext(model), tokenizer, sample=True, max_new_tokens=gen.max_new_tokens,
                      temperature=gen.temperature, top_p=gen.top_p, batch_size=gen.batch_size)


def sample_rows(cfg: SampleStage, ctx: StageContext, sampler, *, tokenizer, prompts: list[dict], state) -> list[dict]:
    """Every prompt's K answers, resuming after the rows a killed attempt committed; chunks seeded by position."""

    def rows_of(indices: range) -> list[dict]:
        torch.manual_seed(cfg.seed * 1_000_003 + indices.start * 101 + state.process_index)
        return shared_work(indices, lambda mine: answer(sampler, tokenizer, [prompts[i] for i in mine],
                                                        k=cfg.samples_per_prompt, max_length=cfg.data.max_length,
                                                        device=state.device))

    def announce(done: list[dict]) -> str:
        return (f"{len(prompts)} prompts × {cfg.samples_per_prompt} answers from {ctx.inputs['model']}"
                + (f"; resuming after prompt {len(done)}" if done else ""))
    return resumable_rows(ctx, count=len(prompts), chunk=cfg.save_every, rows_of=rows_of, announce=announce,
                          unit="prompts")


def answer(sampler: Generator, tokenizer, prompts: list[dict], *, k: int, max_length: int, device) -> list[dict]:
    """K sampled answers to each prompt (a prompt's K copies side by side in the batch)."""
    if not prompts:
        return []
    answered = next(answer_prompts(sampler, tokenizer, [p["prompt"] for p in prompts], max_length=max_length,
                                   device=device, k=k))
    return [{"prompt": p["prompt"], "answers": answered.texts[i * k : (i + 1) * k],
             "stopped": answered.stopped[i * k : (i + 1) * k], "lengths": answered.lengths[i * k : (i + 1) * k],
             "reference": p["reference"], **({"instructions": p["instructions"]} if p.get("instructions") else {})}
            for i, p in enumerate(prompts)]


def samples_table(rows: list[dict], *, limit: int) -> AnswerTable:
    """The first `limit` answers, a prompt's K answers together, for the trackers."""
    answers = [[prompt_text(row["prompt"]), k, text, stopped, length] for row in rows
               for k, (text, stopped, length) in enumerate(zip(row["answers"], row["stopped"], row["lengths"]))]
    return AnswerTable(["prompt", "k", "answer", "stopped", "tokens"], answers[:limit])


def sample_metrics(rows: list[dict], *, k: int) -> dict:
    """What the samples look like: counts, mean length, stop rate, distinct-2, prompts with K identical answers."""
    answers = [a for row in rows for a in row["answers"]]
    return {"samples/prompts": len(rows), "samples/per_prompt": k, "samples/answers": len(answers),
            "samples/mean_length": mean([n for row in rows for n in row["lengths"]]),
            "samples/stop_rate": mean([float(s) for row in rows for s in row["stopped"]]),
            "samples/distinct_2": distinct_n(answers, 2),
            "samples/all_same": mean([float(len(set(row["answers"])) == 1) for row in rows])}
