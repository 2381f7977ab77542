"""lm_eval: lm-evaluation-harness tasks on each of the input models, in one table.

    accelerate launch -m stages.lm_eval --config PIPELINE.yaml --stage NAME

Each model is loaded as the other stages load an artifact, handed to lm-eval's HFLM with its tokenizer, and
evaluated by lm-eval's `simple_evaluate` on the registered tasks and the task folders' YAMLs (their data
files made absolute). The main process evaluates; the others wait. Artifact: `results.json` (lm-eval's
results and per-task configs, per model); manifest metrics `lm_eval/<model>/<task>/<metric>`.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM

from core.atomic import atomic_write_json
from stages.common.entry import StageContext
from stages.common.hf_models import DEFAULT_LOADING, load_causal_lm, load_tokenizer
from stages.common.hf_trainer import quiet_libraries
from stages.common.tracking import log_outcome
from stages.lm_eval.artifact import RESULTS_FILE
from stages.lm_eval.config import METRIC_PREFIX, LmEvalStage, task_configs


def train(ctx: StageContext) -> dict:
    """Evaluate every input model on every task; write results.json; return the metrics."""
    cfg: LmEvalStage = ctx.config
    state = PartialState()
    quiet_libraries()
    tasks = [*cfg.tasks, *(config for folder in cfg.task_dirs for config in task_configs(Path(folder)))]
    models = cfg.family("policies")
    ctx.progress.start(len(models), 0)
    results: dict[str, dict] = {}
    metrics: dict[str, float] = {}
    for done, name in enumerate(models, 1):
        if state.is_main_process:
            results[name] = evaluate(ctx.inputs[f"policies.{name}"], tasks=tasks, cfg=cfg, device=str(state.device))
            metrics |= flat_metrics(name, results[name])
            print(f"[{ctx.name}] {name}: " + ", ".join(f"{k.split('/', 2)[2]} {v:.3f}" for k, v in metrics.items()
                                                      if k.startswith(f"{METRIC_PREFIX}/{name}/")), flush=True)
        ctx.progress.update(done)
    if state.is_main_process:
        ctx.staged_artifact.mkdir(parents=True)
        atomic_write_json(ctx.staged_artifact / RESULTS_FILE, results)
        log_outcome(ctx, metrics, step=len(models))
    state.wait_for_everyone()
    return metrics


def evaluate(model_dir: Path, *, tasks: list, cfg: LmEvalStage, device: str) -> dict:
    """lm-eval's results, per-task configs and versions for one model."""
    model = load_causal_lm(model_dir, DEFAULT_LOADING).to(device).eval()
    lm = HFLM(pretrained=model, tokenizer=load_tokenizer(model_dir), batch_size=cfg.batch_size, device=device)
    out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                          apply_chat_template=cfg.apply_chat_template, log_samples=False, bootstrap_iters=1000,
                          random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
                          fewshot_random_seed=cfg.seed)
    return {key: out[key] for key in ("results", "configs", "versions", "n-shot") if key in out}


def flat_metrics(model: str, result: dict) -> dict[str, float]:
    """`lm_eval/<model>/<task>/<metric>` for every numeric result; lm-eval's `,none` filter suffix dropped,
    another filter kept as `metric[filter]`."""
    flat = {}
    for task, values in result["results"].items():
        for key, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or key == "sample_len":
                continue
            metric, _, kept = key.partition(",")
            name = metric if kept in ("", "none") else f"{metric}[{kept}]"
            flat[f"{METRIC_PREFIX}/{model}/{task}/{name}"] = float(value)
    return flat
