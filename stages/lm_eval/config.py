"""The `lm_eval` kind's config: lm-evaluation-harness tasks on any stages' models (torch-free).

    capitals:
      kind: lm_eval
      inputs: {policies: {sft: sft, ppo: ppo}}
      task_dirs: [data/lm_eval/capitals]     # task YAMLs in lm-eval's format, with their data beside them
      tasks: [arc_easy]                      # lm-eval's registered tasks (their datasets from the Hub or its cache)
      limit: 100

Each model answers every task with lm-eval's own HFLM and `simple_evaluate`; the report shows one table, a row
per task and metric, a column per model. A task directory's files (YAMLs and data) enter the fingerprint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from core.schema import DirPath, StageConfig
from sections.common import Problems

#: the manifest key of one result: lm_eval/<model>/<task>/<metric>
METRIC_PREFIX = "lm_eval"


class LmEvalStage(StageConfig):
    """lm-evaluation-harness tasks on each of `inputs.policies`' models, in one table."""

    kind: Literal["lm_eval"]
    tasks: list[str] = Field([], description="lm-eval's registered task names (their data from the Hub, or the HF "
                                             "cache offline)")
    task_dirs: list[DirPath] = Field([], description="folders of task YAMLs in lm-eval's format; `data_files` "
                                                     "are read relative to the YAML")
    limit: int | None = Field(None, ge=1, description="rows per task (default: all)")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (default: each task's own)")
    batch_size: int = Field(8, ge=1)
    apply_chat_template: bool = Field(False, description="wrap each request in the model's chat template")
    seed: int = 0

    module = "stages.lm_eval"
    input_roles = {"policies": True}
    input_families = frozenset({"policies"})
    headline = ()
    live = ()
    about = ("lm-evaluation-harness (EleutherAI) run on each model as its own `simple_evaluate` runs it: the "
             "harness's task definitions, prompts and metrics, not ours. With `limit`, a task's first rows only.")

    def input_problems(self) -> Problems:
        """lm-eval installed, some task, and task folders holding task YAMLs whose data files exist."""
        problems: Problems = []
        if importlib.util.find_spec("lm_eval") is None:
            problems.append((("kind",), "lm_eval needs lm-evaluation-harness: pip install lm-eval"))
        if not self.tasks and not self.task_dirs:
            problems.append((("tasks",), "name lm-eval tasks, or task_dirs with task YAMLs"))
        for index, folder in enumerate(self.task_dirs):
            try:
                configs = task_configs(Path(folder))
            except (OSError, yaml.YAMLError, ValueError) as error:
                problems.append((("task_dirs", index), str(error)))
                continue
            if not configs:
                problems.append((("task_dirs", index), f"no task YAML (with a `task:` key) in {folder}"))
        return problems

    @classmethod
    def tables(cls, metrics: dict) -> list[tuple[str, list[str], list[list]]]:
        """One table: a row per task and metric, a column per model."""
        results: dict[tuple[str, str], dict[str, float]] = {}
        models: list[str] = []
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) != 4 or parts[0] != METRIC_PREFIX:
                continue
            _, model, task, metric = parts
            results.setdefault((task, metric), {})[model] = value
            models += [model] if model not in models else []
        if not results:
            return []
        rows = [[task, metric, *(_cell(results[(task, metric)].get(m)) for m in models)]
                for task, metric in sorted(results)]
        return [("lm-evaluation-harness", ["task", "metric", *models], rows)]


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def task_configs(folder: Path) -> list[dict]:
    """The task YAMLs in `folder` (those with a `task:` key) as lm-eval task configs, each `data_files` path made
    absolute against the folder (lm-eval would read it against the current directory). Raises ValueError for a
    data file that does not exist."""
    configs = []
    for path in sorted(folder.glob("*.y*ml")):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "task" not in config:
            continue
        files = (config.get("dataset_kwargs") or {}).get("data_files")
        if isinstance(files, dict):
            config["dataset_kwargs"]["data_files"] = {split: _beside(path, name) for split, name in files.items()}
        elif isinstance(files, str):
            config["dataset_kwargs"]["data_files"] = _beside(path, files)
        configs.append(config)
    return configs


def _beside(task_file: Path, name: str) -> str:
    data = (task_file.parent / name).resolve()
    if not data.is_file():
        raise ValueError(f"{task_file.name}: data file not found: {data}")
    return str(data)
