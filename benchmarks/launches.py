"""`python -m benchmarks.launches [--workdir DIR] [--json FILE]`: one stage under each launch setting.

The same pretrain stage and the same PPO stage run with 1 process, 2-process DDP, ZeRO-2 and ZeRO-3 (the
CPU accelerate configs: gloo, 2 processes), all through `rlhf run`. The table gives each stage's wall time
(process start excluded: the stage's own `wall_time_s`) and its training time, as a ratio to the single
process. On a CPU the extra processes share the same cores, so this measures what each engine costs, not a
speed-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.markdown import dict_table
from benchmarks.workspace import DATA, REPO
from core.history import read_history
from core.layout import StageDirs
from core.manifest import read_manifest

LAUNCHES = {"1 process": None, "DDP": "ddp", "ZeRO-2": "zero2", "ZeRO-3": "zero3"}


def stage_name(kind: str, label: str) -> str:
    """The benchmark pipeline's stage of `kind` ("pre" or "ppo") under the launch `label`: pre_zero3, ..."""
    return f"{kind}_{label.lower().replace(' ', '_').replace('-', '')}"


def pipeline_file(workdir: Path) -> Path:
    """pretrain (upstream: a single-process pre/sft/rm chain feeds PPO) and one stage per launch setting."""
    train = lambda steps, batch, **more: {"max_steps": steps, "batch_size": batch, "learning_rate": 1e-3,  # noqa: E731
                                          "save_every": 10_000, "log_every": 10, **more}
    corpus = str(DATA / "pretrain" / "austen" / "persuasion.txt")
    chat = [str(DATA / "sft" / "chatterbot" / "train.jsonl")]
    model = {"init": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 512},
             "tokenizer": {"vocab_size": 2048}}
    pretrain = {"kind": "pretrain", "data": {"train": [corpus], "validation_fraction": 0.05, "block_size": 128},
                "model": model, "train": train(60, 16, micro_batch_size=4)}
    stages = {"pre": pretrain,
              "sft": {"kind": "sft", "inputs": {"model": "pre"}, "data": {"train": chat, "max_length": 128},
                      "samples": {"count": 0}, "train": train(10, 16)},
              "rm": {"kind": "reward", "inputs": {"model": "sft"},
                     "data": {"train": [str(DATA / "reward" / "answer-quality" / "train.jsonl")], "max_length": 96},
                     "train": train(10, 8)}}
    for label, config in LAUNCHES.items():
        launch = {"accelerate_config": str(REPO / "configs" / "accelerate" / (f"{config}_cpu.yaml" if config else "cpu.yaml"))}
        stages[stage_name("pre", label)] = {**pretrain, "launch": launch}
        stages[stage_name("ppo", label)] = {"kind": "ppo", "inputs": {"model": "sft", "reward": "rm"}, "launch": launch,
                                "data": {"train": chat, "max_length": 64}, "generation": {"max_new_tokens": 32},
                                "ppo": {"rollout_batch_size": 16, "mini_batch_size": 8, "epochs": 2},
                                "evaluation": {"prompts": 8, "samples": 0},
                                "train": {"max_steps": 6, "learning_rate": 1e-4, "lr_scheduler": "constant",
                                          "save_every": 10_000, "log_every": 10}}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "launches.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "run", "stages": stages}, sort_keys=False))
    return path


def rows(path: Path) -> list[dict]:
    """Wall and training seconds of each launched stage, and their ratio to the single process."""
    run_dir = path.parent / "run"
    out = []
    for kind in ("pre", "ppo"):
        base = None
        for label in LAUNCHES:
            dirs = StageDirs.of(run_dir, stage_name(kind, label))
            manifest = read_manifest(dirs) or {}
            metrics = manifest.get("metrics") or {}
            training = metrics.get("train/runtime_s")
            if training is None:  # PPO: the iterations' own times
                training = sum(r["time/iteration"] for r in read_history(dirs.logs / "metrics.jsonl")
                               if "time/iteration" in r)
            row = {"stage": "pretrain (60 steps)" if kind == "pre" else "ppo (6 iterations)", "launch": label,
                   "processes": manifest.get("world_size"), "wall_s": manifest.get("wall_time_s"),
                   "train_s": training}
            base = base or row
            row["wall_ratio"] = row["wall_s"] / base["wall_s"] if row["wall_s"] and base["wall_s"] else None
            row["train_ratio"] = row["train_s"] / base["train_s"] if row["train_s"] and base["train_s"] else None
            out.append(row)
    return out


def table(found: list[dict], title: str) -> str:
    """Markdown."""
    return dict_table(title, [("stage", "stage", "", ""), ("launch", "launch", "", ""), ("processes", "processes", "", ""),
                              ("wall", "wall_s", ".1f", " s"), ("× 1 process", "wall_ratio", ".2f", ""),
                              ("training", "train_s", ".1f", " s"), ("× 1 process", "train_ratio", ".2f", "")], found)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.__main__ import machine

    parser = argparse.ArgumentParser(prog="python -m benchmarks.launches", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/launches"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    path = pipeline_file(args.workdir.resolve())
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(path)])
    found = rows(path)
    title = f"one stage under each launch ({time.perf_counter() - started:.0f} s in all) on {machine()}"
    print("\n" + table(found, title))
    if args.json:
        args.json.write_text(json.dumps({"title": title, "rows": found}, indent=2))
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
