"""The `eval` kind's config: policies judged side by side by an independent judge (torch-free).

    eval:
      kind: eval
      inputs: {policies: {sft: sft, ppo: ppo}, judge: gold_rm}   # judge: a reward stage, or judge.model / a rule
      baseline: sft          # win rates are against this policy; KL is to inputs.reference, default the baseline
      judge: {kind: judge}   # or {kind: rule, function: module:function}
      data: {prompts: [held_out.jsonl], max_prompts: 64}

The judge is never the reward model a policy was optimised against: a PPO stage (or any RL stage with a
`reward` input) upstream of a policy makes its reward model unusable as the judge, checked from the
pipeline before anything runs and from the fingerprints when the stage starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from core.numbers import fmt, percent
from core.progress import format_duration
from core.schema import StageConfig
from measures.verdict import GUARD_NAMES, points, verdicts
from rows.records import prompt_problems
from sections.common import LoadingSettings, Problems, PromptFiles, SamplingSettings, too_long
from sections.labelers import JudgeLabeler, SimulatedLabeler, judge_problems
from sections.scorers import REWARD_ROLES

#: the artifact's file: every policy's answer to every prompt, with the judge's scores
ANSWERS_FILE = "answers.jsonl"


class EvalStage(StageConfig):
    """Each policy answers the same held-out prompts (same sampling settings and seed); the judge scores every
    answer; the report compares them with 95% intervals."""

    kind: Literal["eval"]
    data: PromptFiles
    judge: SimulatedLabeler = Field(JudgeLabeler(kind="judge"), description="who scores the answers (not a human)")
    baseline: str | None = Field(None, description="the policy the others' win rates are against; default: the first")
    generation: SamplingSettings = SamplingSettings(temperature=1.0, max_new_tokens=48)
    model: LoadingSettings | None = Field(None, description="how the policies are loaded from their artifacts")
    samples: int = Field(4, ge=0, description="prompts whose answers the report shows")
    seed: int = 0

    module = "stages.eval"
    version = 2  # 2: top-p's nucleus keeps a tie at its edge whole (a KL under bf16 can differ where the edge is tied)
    input_roles = {"policies": True, "judge": False, "reference": False}
    input_families = frozenset({"policies"})
    headline = ("eval/prompts", "eval/best_policy", "eval/best_prompt_loose_diff", "eval/best_win_rate")
    gives_verdict = True
    live = ("eval/policies_done",)
    about = ("Every policy answers the same held-out prompts with the same sampling settings and seed, and one "
             "judge, independent of the reward models the policies were optimised against, scores every answer. "
             "Win rates are paired by prompt against the baseline (ties count half); KL is a sample estimate of "
             "KL(policy || reference) per answer, in nats; intervals are 95% bootstrap intervals over prompts.")

    def baseline_name(self) -> str:
        """The baseline policy's name."""
        return self.baseline or next(iter(self.family("policies")), "")

    def input_problems(self) -> Problems:
        """A known baseline, a judge that can run and ranks by its scores alone."""
        problems: Problems = []
        policies = self.family("policies")
        if self.baseline is not None and policies and self.baseline not in policies:
            problems.append((("baseline",), f"no policy named {self.baseline!r} (policies: {', '.join(policies)})"))
        problems += judge_problems(self.judge, self.inputs, ("judge",))
        if self.model is not None:
            problems += self.model.loading_problems()
        return problems + self.generation.engine_problems()

    def pipeline_problems(self, stages: dict[str, StageConfig]) -> Problems:
        """The judge is none of the reward models the policies were optimised against (by stage name or path
        here; by the weights' content when the stage starts)."""
        judge_stage = self.inputs.get("judge")
        judge_dir = self.judge.reward_model_dir()
        judge_path = judge_dir.resolve() if judge_dir else None
        if judge_stage is None and judge_path is None:
            return []
        for name, source in self.family("policies").items():
            for ancestor in [source, *_ancestors(stages, source)]:
                stage = stages[ancestor]
                reward_path = getattr(stage, "reward_model", None)
                if judge_path is not None and reward_path is not None and Path(reward_path).resolve() == judge_path:
                    return [(("judge", "model"), _proxy_message(str(judge_path), ancestor, name))]
                if judge_stage is not None and any(stage.inputs.get(role) == judge_stage for role in REWARD_ROLES):
                    return [(("inputs", "judge"), _proxy_message(judge_stage, ancestor, name))]
        return []

    def data_problems(self) -> list[str]:
        """Unreadable prompt files and rows without a prompt, with file and line."""
        return prompt_problems(list(self.data.prompts))

    def length_problems(self, upstream: dict[str, int | None]) -> Problems:
        """Prompt and answer beyond any policy's positions."""
        problems: Problems = []
        for role, positions in upstream.items():
            if role.startswith("policies."):
                problems += too_long(("data", "max_length"), self.data.max_length + self.generation.max_new_tokens,
                                     positions, what="data.max_length + generation.max_new_tokens")
        return problems[:1]

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """The verdict against the baseline, per policy: the objective (IFEval's checkers on prompts with
        instructions, else the judge's win rate) with its paired interval, beside the guard (measures/verdict.py)."""
        sentences = verdicts(metrics)
        if not sentences:
            return ""
        objective = (f"IFEval's checkers on {metrics.get('eval/instruction_prompts')} held-out prompts with "
                     "instructions" if metrics.get("eval/instruction_prompts")
                     else f"{metrics.get('eval/judge')} on {metrics.get('eval/prompts')} held-out prompts")
        return f"Judged by {objective}, against {metrics.get('eval/baseline')}: " + "; ".join(sentences) + "."

    @classmethod
    def tables(cls, metrics: dict) -> list[tuple[str, list[str], list[list]]]:
        """The objective table (IFEval's four metrics, with the paired difference to the baseline), the guard
        table, the per-instruction table and the sample answers; without instructions, the judge's table."""
        rows = metrics.get("policies") or []
        if not rows:
            return []
        baseline = metrics.get("eval/baseline")
        interval = lambda r, key: "–" if r.get(key) is None else \
            f"{fmt(r[key])} [{fmt(r.get(f'{key}_low'))}, {fmt(r.get(f'{key}_high'))}]"  # noqa: E731
        share = lambda r, key: "–" if r.get(key) is None else \
            f"{percent(r[key])} [{percent(r.get(f'{key}_low'))}, {percent(r.get(f'{key}_high'))}]"  # noqa: E731
        diff = lambda r, key: "baseline" if r["name"] == baseline else \
            f"{points(r.get(f'{key}_diff'))} [{points(r.get(f'{key}_diff_low'))}, {points(r.get(f'{key}_diff_high'))}]"  # noqa: E731
        signed = lambda r, key: "–" if r.get(f"{key}_diff") is None else \
            f"{r[f'{key}_diff']:+.3f} [{r[f'{key}_diff_low']:+.3f}, {r[f'{key}_diff_high']:+.3f}]"  # noqa: E731
        kind = lambda r: (r.get("kind") or "") + (" (RLVR: optimised on the judge's rule)"  # noqa: E731
                                                  if r.get("optimised_on_judge") else "")
        cost = lambda r: [format_duration(r.get("wall_time_s")), fmt(r.get("peak_memory_gb"))]  # noqa: E731
        tables = []
        if any(r.get("prompt_loose") is not None for r in rows):
            tables.append(("IFEval on held-out prompts (95% intervals over prompts; differences in points, paired "
                           f"by prompt against {baseline})",
                           ["policy", "kind", "prompt loose", "vs baseline", "prompt strict", "instruction loose",
                            "vs baseline", "instruction strict", "KL to reference (nats)", "wall time",
                            "peak memory (GB)"],
                           [[r["name"], kind(r), share(r, "prompt_loose"), diff(r, "prompt_loose"),
                             share(r, "prompt_strict"), share(r, "instruction_loose"), diff(r, "instruction_loose"),
                             share(r, "instruction_strict"), interval(r, "kl"), *cost(r)] for r in rows]))
        else:
            tables.append(("Policies (95% intervals; wall time and peak memory of the stage that trained each)",
                           ["policy", "kind", "judge score", f"win rate vs {baseline}", "KL to reference (nats)",
                            "wall time", "peak memory (GB)"],
                           [[r["name"], kind(r), interval(r, "judge_score"),
                             "baseline" if r["name"] == baseline else interval(r, "win_rate"), interval(r, "kl"),
                             *cost(r)] for r in rows]))
        tables.append(("Guard against degenerate wins (differences to the baseline with 95% paired intervals)",
                       ["policy", "function-word share", "distinct-2", "repeated 3-grams", "content-word F1",
                        "length (tokens)", "stop rate", "judge score", "worse beyond interval"],
                       [[r["name"], *(fmt(r.get(k)) + ("" if r["name"] == baseline else f" ({signed(r, k)})")
                                      for k in GUARD_NAMES), fmt(r.get("length")), percent(r.get("stop_rate")),
                         interval(r, "judge_score"),
                         "baseline" if r["name"] == baseline else ", ".join(r.get("guard_worse") or []) or "none"]
                        for r in rows]))
        types = sorted({t for r in rows for t in (r.get("instruction_types") or {})})
        if types:
            cell = lambda r, t: "–" if t not in (r.get("instruction_types") or {}) else \
                f"{percent(r['instruction_types'][t]['loose'])} of {r['instruction_types'][t]['count']}"  # noqa: E731
            tables.append(("Per instruction type (loose accuracy, of how many asked)",
                           ["instruction", *(r["name"] for r in rows)], [[t, *(cell(r, t) for r in rows)] for t in types]))
        samples = metrics.get("samples") or []
        if samples:
            names = [r["name"] for r in rows]
            headers = ["prompt"] + [h for n in names for h in (n, f"{n} score")]
            tables.append(("Sample answers (judge scores)", headers,
                           [[s["prompt"]] + [v for n in names for v in (s[n], fmt(s[f"{n}_score"]))] for s in samples]))
        return tables


def _proxy_message(judge: str, ancestor: str, policy: str) -> str:
    return (f"{judge!r} is the reward model {ancestor!r} optimised policy {policy!r} against, so it would flatter "
            "it; judge with an independent one (a reward stage trained on other labels, or a rule)")


def _ancestors(stages: dict[str, StageConfig], name: str) -> list[str]:
    """Every stage `name` depends on, directly or not (the pipeline is acyclic here)."""
    found, todo = [], list(stages[name].inputs.values())
    while todo:
        source = todo.pop()
        if source not in found and source in stages:
            found.append(source)
            todo += list(stages[source].inputs.values())
    return found
