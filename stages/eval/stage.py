"""eval: policies answer the same held-out prompts; an independent judge scores every answer.

    accelerate launch -m stages.eval --config PIPELINE.yaml --stage eval

Inputs `policies.<name>` (causal-LM artifacts: SFT, PPO, ...), `reference` (the KL reference; default the
baseline policy) and `judge` (a reward stage) unless the judge is `judge.model` or a rule. Each policy in turn
samples one answer per prompt (seeded alike, each process its share of the prompts); the reference scores the
same tokens, giving a sample estimate of KL(policy || reference) per answer (the policy's log-probs under the
sampling distribution, temperature and top-p, against the reference's built the same way, as PPO's KL
penalty). A policy's answers are a checkpoint (the rows so far), so a killed stage resumes after the last
policy it finished. Then the judge scores every policy's answer to a prompt together (a rule sees them side by
side).

The artifact is `answers.jsonl` (a row per prompt: `prompt`, `answers` and `scores` by policy name) and
`evaluation.json` (who judged, the fingerprints of the policies, the reference and the judge).
"""

from __future__ import annotations

import contextlib

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from core.atomic import atomic_write_json
from core.errors import InputError
from measures.guard import guard_differences, guard_metrics, length_differences, worse_beyond_interval
from measures.instruction_metrics import instruction_metrics, per_instruction_type
from measures.stats import bootstrap_interval, mean, paired_wins
from rows.instructions import Checked, check
from rows.messages import prompt_text
from rows.records import distinct_prompts
from sections.scorers import optimised_against, weights_digest
from stages.common.chat import check_context_length, load_chat_tokenizer
from stages.common.distribution import policy_logits, token_logprobs
from stages.common.entry import StageContext
from stages.common.generation import Generator, HFGenerator, answer_prompts
from stages.common.hf_models import Loading, load_causal_lm
from stages.common.hf_trainer import quiet_libraries
from stages.common.labelers import labeler_scores
from stages.common.row_checkpoints import resumable_rows, shared_work, write_rows
from stages.common.tracking import AnswerTable, log_outcome
from stages.common.vllm_engine import VLLMGenerator
from stages.eval.config import ANSWERS_FILE, EvalStage


def train(ctx: StageContext) -> dict:
    """Answer with every policy (resumably), judge, write answers.jsonl; return the manifest metrics."""
    cfg: EvalStage = ctx.config
    state = PartialState()
    quiet_libraries()
    loading = Loading.of(cfg.model)
    policies = cfg.family("policies")
    on_judge_rule = judge_independence(ctx, policies)
    reference_role = "reference" if "reference" in ctx.inputs else f"policies.{cfg.baseline_name()}"
    prompts = distinct_prompts(cfg.data.prompts, cfg.data.max_prompts)
    mine = list(range(len(prompts)))[state.process_index :: state.num_processes]
    tokenizer = load_chat_tokenizer(ctx.inputs[reference_role], "auto", loading)
    for name in policies:
        check_same_chat_tokenizer(tokenizer, ctx.inputs[f"policies.{name}"], name=name, loading=loading)
    reference = load_causal_lm(ctx.inputs[reference_role], loading).to(state.device).eval()
    names = list(policies)
    with PolicySamplers(cfg, tokenizer, log_prefix=ctx.name) as samplers:

        def rows_of(indices: range) -> list[dict]:
            name = names[indices.start]
            policy_dir = ctx.inputs[f"policies.{name}"]
            check_context_length(policy_dir, cfg.data.max_length + cfg.generation.max_new_tokens,
                                 "data.max_length + generation.max_new_tokens", loading=loading)
            same = policy_dir == ctx.inputs[reference_role]
            policy = reference if same else load_causal_lm(policy_dir, loading).to(state.device).eval()
            sampler = samplers.of(policy, policy_dir)
            torch.manual_seed(cfg.seed * 1_000_003 + state.process_index)  # every policy draws alike
            answered = shared_work(range(len(prompts)), lambda share: answer_with_kl(
                policy, reference, sampler, tokenizer=tokenizer, prompts=[prompts[i]["prompt"] for i in share],
                cfg=cfg, device=state.device))
            return [{"policy": name, **{key: [a[key] for a in answered] for key in answered_keys()}}]

        def announce(done: list[dict]) -> str:
            return (f"{len(policies)} policies × {len(prompts)} prompts, judged by {cfg.judge.describe()}"
                    + (f"; resuming after policy {done[-1]['policy']}" if done else ""))
        rows = resumable_rows(ctx, count=len(names), chunk=1, rows_of=rows_of, announce=announce, unit="policies_done")
    reference = None  # freed before the judge loads
    scores = judge_scores(cfg, ctx, prompts, rows=rows, mine=mine, device=state.device)
    if state.is_main_process:
        ctx.staged_artifact.mkdir(parents=True)
        write_rows(ctx.staged_artifact / ANSWERS_FILE,
                   [{"prompt": p["prompt"], "answers": {r["policy"]: r["answers"][i] for r in rows},
                     "scores": {r["policy"]: scores[i][j] for j, r in enumerate(rows)}} for i, p in enumerate(prompts)])
        inputs = ctx.spec["inputs"]
        atomic_write_json(ctx.staged_artifact / "evaluation.json",
                          {"judge": cfg.judge.describe(), "judge_fingerprint": inputs.get("judge", {}).get("fingerprint"),
                           "reference_fingerprint": inputs[reference_role]["fingerprint"],
                           "policy_fingerprints": {n: inputs[f"policies.{n}"]["fingerprint"] for n in policies}})
    training = {n: {**training_cost(ctx.input_manifest(f"policies.{n}")), "optimised_on_judge": on_judge_rule[n]}
                for n in policies}
    metrics = eval_metrics(rows, scores, prompts, baseline=cfg.baseline_name(), judge=cfg.judge.describe(),
                           samples=cfg.samples, seed=cfg.seed, training=training)
    if state.is_main_process:
        log_outcome(ctx, metrics, step=len(prompts),
                    tables={"answers": answers_table(rows, scores, prompts, limit=cfg.tracking.table_rows)})
    return metrics


def answers_table(rows: list[dict], scores: list[list[float]], prompts: list[dict], *, limit: int) -> AnswerTable:
    """The policies' answers to the first prompts side by side with the judge's scores (`limit` answers in all,
    as many prompts as that covers for every policy), for the trackers."""
    shown = range(min(len(prompts), max(1, limit // max(1, len(rows)))) if limit else 0)
    return AnswerTable(["prompt", "policy", "answer", "judge score"],
                       [[prompt_text(prompts[i]["prompt"]), row["policy"], row["answers"][i], scores[i][j]]
                        for i in shown for j, row in enumerate(rows)])


def training_cost(manifest: dict | None) -> dict:
    """What training a policy cost, from its stage's manifest: kind, wall time (its last attempt), peak memory."""
    if not manifest:
        return {}
    return {"kind": manifest.get("kind"), "wall_time_s": manifest.get("wall_time_s"),
            "peak_memory_gb": (manifest.get("metrics") or {}).get("resources/peak_memory_gb")}


def judge_independence(ctx: StageContext, policies: dict[str, str]) -> dict[str, bool]:
    """Refuse a judge model whose weights are a reward model a policy (or an ancestor of it) was optimised
    against, however it was named (another stage, a path, grpo/rloo's reward_model); compared by content.
    Return, per policy, whether it was optimised on the judge's own rule (RLVR: legitimate, and said so)."""
    cfg: EvalStage = ctx.config
    judge_dir = ctx.inputs.get("judge") or getattr(cfg.judge, "model", None)
    judge_digest = weights_digest(judge_dir) if judge_dir is not None and cfg.judge.kind == "judge" else None
    judge_rule = cfg.judge.function if cfg.judge.kind == "rule" else None
    on_judge_rule = {}
    for name in policies:
        optimised = optimised_against(ctx.input_manifest(f"policies.{name}"))
        if judge_digest is not None and judge_digest in optimised.models:
            raise InputError(f"{ctx.name}: the judge ({judge_dir}) has the weights of the reward model that "
                             f"{optimised.models[judge_digest]} optimised policy {name!r} against, so it would "
                             "flatter it; judge with an independent one")
        on_judge_rule[name] = judge_rule is not None and judge_rule in optimised.rules
    return on_judge_rule


def check_same_chat_tokenizer(tokenizer, policy_dir, *, name: str, loading: Loading) -> None:
    """Every policy is prompted with the reference's tokenizer and chat template, and its KL is taken against
    the reference's log-probs of the same tokens: a policy with another vocabulary or template would be
    prompted in a format it was not trained on, so it is refused."""
    own = load_chat_tokenizer(policy_dir, "auto", loading)
    if own.get_vocab() != tokenizer.get_vocab():
        raise InputError(f"inputs.policies.{name} ({policy_dir}): its tokenizer's vocabulary differs from the "
                         "reference's; compare policies trained from one base")
    if own.chat_template != tokenizer.chat_template:
        raise InputError(f"inputs.policies.{name} ({policy_dir}): its chat template differs from the reference's, so "
                         "it would be prompted in a format it was not trained on; compare policies that share one")


def answered_keys() -> tuple[str, ...]:
    """What each policy's row holds per prompt."""
    return ("answers", "kl", "lengths", "stopped")


class PolicySamplers:
    """Samplers for the policies in turn: generate on each one's loaded model, or one vLLM engine for the stage
    (started on the first policy, given each next policy's weights in place of a restart, closed on exit)."""

    def __init__(self, cfg: EvalStage, tokenizer, *, log_prefix: str):
        self.cfg, self.tokenizer, self.log_prefix = cfg, tokenizer, log_prefix
        self.engine: VLLMGenerator | None = None

    def of(self, policy, policy_dir) -> Generator:
        """The sampler of `policy` (loaded from `policy_dir`)."""
        gen = self.cfg.generation
        if gen.engine != "vllm":
            return HFGenerator(lambda: contextlib.nullcontext(policy), self.tokenizer, max_new_tokens=gen.max_new_tokens,
                               temperature=gen.temperature, top_p=gen.top_p)
        if self.engine is None:
            self.engine = VLLMGenerator.of(policy_dir, self.tokenizer, gen,
                                           max_model_len=self.cfg.data.max_length + gen.max_new_tokens,
                                           dtype=self.cfg.model.dtype if self.cfg.model else None, seed=self.cfg.seed,
                                           log_prefix=self.log_prefix)
        self.engine.load_directory(policy_dir)
        return self.engine

    def __enter__(self) -> "PolicySamplers":
        return self

    def __exit__(self, *exc) -> None:
        if self.engine is not None:
            self.engine.close()


@torch.no_grad()
def answer_with_kl(policy, reference, sampler: Generator, *, tokenizer, prompts: list[list[dict]], cfg: EvalStage,
                   device) -> list[dict]:
    """One answer per prompt from `sampler` (the policy's), with its KL to the reference (sum over the answer of
    log pi - log pi_ref, both recomputed here), length in tokens (EOS included) and whether it ended at EOS."""
    settings = cfg.generation
    out = []
    step = settings.batch_size or (64 if settings.engine == "vllm" else 8)  # vLLM batches what it is given
    for batch in answer_prompts(sampler, tokenizer, prompts, max_length=cfg.data.max_length, device=device,
                                batch_size=step):
        ids = torch.cat([batch.queries, batch.responses], 1)
        attention = torch.cat([batch.query_mask, batch.mask], 1)
        prompt_length = batch.queries.shape[1]
        logprobs = token_logprobs(policy_logits(policy, ids, attention, prompt_length=prompt_length), batch.responses,
                                  temperature=settings.temperature, top_p=settings.top_p)
        # the reference's distribution built as the policy's, as in PPO's penalty (stages.common.distribution)
        ref_logprobs = token_logprobs(policy_logits(reference, ids, attention, prompt_length=prompt_length),
                                      batch.responses, temperature=settings.temperature, top_p=settings.top_p)
        kls = ((logprobs - ref_logprobs) * batch.mask).sum(1).tolist()
        out += [{"answers": text, "kl": kl, "lengths": length, "stopped": stop}
                for text, kl, length, stop in zip(batch.texts, kls, batch.lengths, batch.stopped)]
    return out


def checked_answers(answers: list[str], prompts: list[dict]) -> list[list[Checked]]:
    """Each answer to a prompt with verifiable instructions, checked by IFEval's checkers (others left out)."""
    return [check(answer, p["instructions"], prompt_text(p["prompt"]))
            for answer, p in zip(answers, prompts) if p.get("instructions")]


def judge_scores(cfg: EvalStage, ctx: StageContext, prompts: list[dict], *, rows: list[dict], mine: list[int],
                 device) -> list[list[float]]:
    """[prompt][policy] the judge's scores; each process judges its share, every process gets them all."""
    score = labeler_scores(cfg.judge, judge_dir=ctx.inputs.get("judge"), device=device)
    judged = [{"prompt": prompts[i]["prompt"], "answers": [r["answers"][i] for r in rows],
               "reference": prompts[i]["reference"], "instructions": prompts[i].get("instructions")} for i in mine]
    scored = list(zip(mine, score(judged))) if judged else []
    return [s for _, s in sorted(gather_object(scored), key=lambda item: item[0])]


def eval_metrics(rows: list[dict], scores: list[list[float]], prompts: list[dict], *, baseline: str, judge: str,
                 samples: int, seed: int, training: dict[str, dict] | None = None) -> dict:
    """Per policy, with 95% bootstrap intervals over prompts: judge score, win rate against the baseline
    (paired by prompt, ties half), KL to the reference; the guard against degenerate wins (measures/guard.py:
    function-word share, distinct-2, repeated 3-grams, content-word overlap with the reference and its paired
    difference to the baseline, length, stop rate); and on prompts with verifiable instructions, IFEval's four
    metrics with the paired difference to the baseline and a per-instruction table. `policies` holds them as
    a table, `eval/<policy>/<metric>` flat for scripts and status; `training` adds what each policy's stage
    cost (kind, wall time, peak memory) to its row."""
    names = [r["policy"] for r in rows]
    base = names.index(baseline)
    references = [p["reference"] for p in prompts]
    checked = [checked_answers(row["answers"], prompts) for row in rows]
    table = []
    for j, row in enumerate(rows):
        judged = [s[j] for s in scores]
        wins = paired_wins([s[base] for s in scores], judged)
        entry = {"name": row["policy"], "judge_score": mean(judged), "win_rate": mean(wins), "kl": mean(row["kl"]),
                 **guard_metrics(row["answers"], references=references, stopped=row["stopped"], lengths=row["lengths"])}
        for key, values in (("judge_score", judged), ("win_rate", wins), ("kl", row["kl"])):
            entry[f"{key}_low"], entry[f"{key}_high"] = bootstrap_interval(values, seed=seed)
        if j != base:
            entry.update(guard_differences(row["answers"], rows[base]["answers"], references=references, seed=seed))
            entry.update(length_differences(row["lengths"], rows[base]["lengths"], stopped=row["stopped"],
                                            baseline_stopped=rows[base]["stopped"], seed=seed))
            entry["guard_worse"] = worse_beyond_interval(entry, baseline_length=mean(rows[base]["lengths"]))
        if checked[j]:
            entry.update(instruction_metrics(checked[j], baseline=checked[base] if j != base else None, seed=seed))
            entry["instruction_types"] = per_instruction_type(checked[j])
        entry.update((training or {}).get(row["policy"], {}))
        table.append(entry)
    metrics: dict = {"eval/prompts": len(prompts), "eval/baseline": baseline, "eval/judge": judge,
                     "eval/instruction_prompts": len(checked[0]) if checked else 0}
    for entry in table:
        metrics.update({f"eval/{entry['name']}/{k}": v for k, v in entry.items()
                        if k not in ("name", "kind", "instruction_types")})
    others = [e for e in table if e["name"] != baseline]
    if others:
        if checked[0]:  # the objective: IFEval's prompt-level loose accuracy, paired with the baseline
            best = max(others, key=lambda e: e["prompt_loose_diff"])
            metrics["eval/best_prompt_loose_diff"] = best["prompt_loose_diff"]
        else:
            best = max(others, key=lambda e: e["win_rate"])
        metrics["eval/best_policy"], metrics["eval/best_win_rate"] = best["name"], best["win_rate"]
    metrics["policies"] = table
    metrics["samples"] = [{"prompt": prompt_text(prompts[i]["prompt"]),
                           **{n: rows[j]["answers"][i] for j, n in enumerate(names)},
                           **{f"{n}_score": round(scores[i][j], 4) for j, n in enumerate(names)}}
                          for i in range(min(samples, len(prompts)))]
    return metrics
