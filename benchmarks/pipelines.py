"""`python -m benchmarks.pipelines CONFIG [--precision bf16] [--steps STAGE=N ...] [--workdir DIR] [--json FILE]`

A shipped pipeline (configs/pipelines/*.yaml) run whole through `rlhf run`, as a user would, then one row
per stage read back from its manifest and metrics.jsonl: wall time, training throughput in tokens/s, and for
PPO the seconds per iteration, samples/s and generated tokens/s. This is how the GPU rows of RESULTS.md are
measured. The pipeline is copied to WORKDIR with its run directory there, its relative paths made absolute,
and `--precision` / `--steps` applied, so the shipped file and its runs stay untouched.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.markdown import dict_table
from core.history import read_history
from core.layout import StageDirs
from core.manifest import read_manifest


def absolute_paths(node, base: Path):
    """Every relative string in the tree that names an existing file or folder beside the pipeline file,
    made absolute (the copy lives elsewhere)."""
    if isinstance(node, dict):
        return {k: absolute_paths(v, base) for k, v in node.items()}
    if isinstance(node, list):
        return [absolute_paths(v, base) for v in node]
    if isinstance(node, str) and not Path(node).is_absolute() and "/" in node and (base / node).exists():
        return str((base / node).resolve())
    return node


def variant(config: Path, workdir: Path, precision: str | None, *, steps: dict[str, int]) -> Path:
    """Write the copy of `config` this benchmark runs: run_dir under `workdir`, every stage's precision and
    the chosen stages' max_steps overridden."""
    data = absolute_paths(yaml.safe_load(config.read_text(encoding="utf-8")), config.resolve().parent)
    data["run_dir"] = str((workdir / "run").resolve())
    unknown = set(steps) - set(data["stages"])
    if unknown:
        raise SystemExit(f"--steps: no stage {', '.join(sorted(unknown))} in {config}")
    for name, stage in data["stages"].items():
        if "train" not in stage:  # sample, rank, eval: nothing trained
            if name in steps:
                raise SystemExit(f"--steps: stage {name} ({stage['kind']}) trains nothing")
            continue
        train = stage["train"]
        if precision:
            train["precision"] = precision
        if name in steps:
            train["max_steps"] = steps[name]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{config.stem}{'-' + precision if precision else ''}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def stage_rows(pipeline_file: Path) -> list[dict]:
    """One row per stage of a completed run: what it did per second."""
    data = yaml.safe_load(pipeline_file.read_text(encoding="utf-8"))
    run_dir = Path(data["run_dir"])
    rows = []
    for name, stage in data["stages"].items():
        dirs = StageDirs.of(run_dir, name)
        manifest = read_manifest(dirs) or {}
        m = manifest.get("metrics") or {}
        row = {"stage": name, "kind": stage["kind"], "processes": manifest.get("world_size"),
               "wall_s": manifest.get("wall_time_s"), "train_s": m.get("train/runtime_s"),
               "steps": m.get("train/steps", m.get("train/iterations")), "tokens_per_s": None, "note": ""}
        if m.get("train/tokens") and m.get("train/runtime_s"):
            row["tokens_per_s"] = m["train/tokens"] / m["train/runtime_s"]
        if stage["kind"] == "ppo":
            history = [r for r in read_history(dirs.logs / "metrics.jsonl") if "time/iteration" in r]
            timed = history[1:] or history  # the first iteration pays warm-up costs
            if timed:
                def mean(key: str, records: list[dict] = timed) -> float:
                    return statistics.fmean(r[key] for r in records)

                batch = stage.get("ppo", {}).get("rollout_batch_size", 0)
                per_iteration = mean("time/iteration")
                row["train_s"] = sum(r["time/iteration"] for r in history)
                row["tokens_per_s"] = batch * mean("response/length") / mean("time/generate")
                split = "/".join(f"{100 * mean(f'time/{p}') / per_iteration:.0f}" for p in ("generate", "score", "train"))
                row["note"] = (f"{per_iteration:.2f} s/iteration, {batch / per_iteration:.1f} samples/s; tokens/s "
                               f"= generated; generate/score/train % {split}")
        elif stage["kind"] == "pretrain" and m.get("model/parameters"):
            row["note"] = f"{m['model/parameters'] / 1e6:.1f} M parameters"
        elif stage["kind"] == "reward" and m.get("train/runtime_s"):
            batch = (manifest.get("config") or stage).get("train", {}).get("batch_size", 0)
            row["note"] = f"{m['train/steps'] * batch / m['train/runtime_s']:.1f} ranked prompts/s"
        rows.append(row)
    return rows


def table(rows: list[dict], title: str) -> str:
    """The rows as a Markdown table."""
    return dict_table(title, [("stage", "stage", "", ""), ("kind", "kind", "", ""), ("processes", "processes", "", ""),
                              ("steps", "steps", "", ""), ("wall", "wall_s", ".0f", " s"), ("training", "train_s", ".0f", " s"),
                              ("tokens/s", "tokens_per_s", ",.0f", ""), ("notes", "note", "", "")], rows)


def _steps(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        stage, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise SystemExit(f"--steps {item}: expected STAGE=N")
        out[stage] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.__main__ import machine

    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="a pipeline file, e.g. configs/pipelines/tiny.yaml")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="for every stage")
    parser.add_argument("--steps", nargs="+", default=[], metavar="STAGE=N", help="shorter stages (max_steps)")
    parser.add_argument("--workdir", type=Path, help="default: runs/speed/<config name>")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path("runs/speed") / args.config.stem
    pipeline_file = variant(args.config, workdir, args.precision, steps=_steps(args.steps))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(pipeline_file)])
    wall = time.perf_counter() - started
    rows = stage_rows(pipeline_file)
    title = (f"{args.config.name}, {args.precision or 'as configured'}: `rlhf run` {wall:.0f} s in all "
             f"(exit {done.returncode}) on {machine()}")
    print("\n" + table(rows, title))
    if args.json:
        args.json.write_text(json.dumps({"title": title, "wall_s": wall, "exit": done.returncode, "rows": rows},
                                        indent=2))
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
