"""The benchmark's own pipeline: stages sized for --quick or full mode, run in this process, and their
numbers read back from manifests and metric histories (the same files the report uses)."""

from __future__ import annotations

import copy
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.history import read_history
from core.layout import StageDirs
from core.manifest import read_manifest
from pipeline.config import load_pipeline
from stages.common.entry import run_stage

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
#: the top-p of the PPO line that samples from a nucleus (the shipped real-model pipelines' setting)
PPO_TOP_P = 0.95


@dataclass(frozen=True)
class Size:
    """How big and how long every benchmark run is."""

    hidden: int
    layers: int
    heads: int
    pretrain_steps: int
    sft_steps: int
    reward_steps: int
    ppo_iterations: int
    ppo_settings: tuple[tuple[int, int], ...]  # (rollout batch, response length)
    sft_sources: tuple[str, ...] = ("chatterbot", "python-faq", "jargon")  # short, long and medium answers


QUICK = Size(hidden=64, layers=2, heads=4, pretrain_steps=20, sft_steps=12, reward_steps=8, ppo_iterations=3,
             ppo_settings=((8, 16), (16, 32)), sft_sources=("chatterbot", "python-faq"))
FULL = Size(hidden=256, layers=4, heads=8, pretrain_steps=60, sft_steps=40, reward_steps=40, ppo_iterations=6,
            ppo_settings=((8, 32), (16, 32), (32, 64)))


def k8_rankings(out: Path) -> Path:
    """WordNet prompts with at least 8 ranked senses, cut to the 8 best: K = 8 exactly."""
    rows = []
    for line in (DATA / "reward" / "wordnet" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        if len(row["answers"]) >= 8:
            best = sorted(range(len(row["answers"])), key=lambda i: row["ranks"][i])[:8]
            ranks = [row["ranks"][i] for i in best]
            if len(set(ranks)) > 1:
                rows.append({"prompt": row["prompt"], "answers": [row["answers"][i] for i in best], "ranks": ranks})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def pipeline_file(workdir: Path, size: Size) -> Path:
    """Write the benchmark pipeline: pretrain -> SFT (packed and padded) -> reward (K=4, K=8) -> PPO."""
    workdir.mkdir(parents=True, exist_ok=True)
    train = lambda steps, batch, lr, **more: {"max_steps": steps, "batch_size": batch, "learning_rate": lr,  # noqa: E731
                                              "log_every": 5, "save_every": 10_000, **more}
    sft_files = [str(DATA / "sft" / name / "train.jsonl") for name in size.sft_sources]
    sft_data = {"train": sft_files, "max_length": 128}
    stages = {
        "pre": {"kind": "pretrain",
                "data": {"train": [str(DATA / "pretrain" / "austen" / "pride-and-prejudice.txt")],
                         "validation_fraction": 0.05, "block_size": 128},
                "model": {"init": {"architecture": "llama", "hidden_size": size.hidden, "num_layers": size.layers,
                                   "num_heads": size.heads, "intermediate_size": 4 * size.hidden},
                          "tokenizer": {"vocab_size": 4096, "min_frequency": 2}},
                "train": train(size.pretrain_steps, 16, 3e-3)},
        "sft_packed": {"kind": "sft", "inputs": {"model": "pre"}, "data": {**sft_data, "packing": True},
                       "samples": {"count": 0}, "train": train(size.sft_steps, 16, 2e-3)},
        "sft_padded": {"kind": "sft", "inputs": {"model": "pre"}, "data": {**sft_data, "packing": False},
                       "samples": {"count": 0}, "train": train(size.sft_steps, 16, 2e-3)},
        "rm_k4": {"kind": "reward", "inputs": {"model": "sft_packed"},
                  "data": {"train": [str(DATA / "reward" / "answer-quality" / "train.jsonl")], "max_length": 96},
                  "train": train(size.reward_steps, 8, 3e-3)},
        "rm_k8": {"kind": "reward", "inputs": {"model": "sft_packed"},
                  "data": {"train": [str(k8_rankings(workdir / "wordnet-k8.jsonl"))], "max_length": 96},
                  "train": train(size.reward_steps, 8, 3e-3)},
    }
    # dpo on the K = 4 rankings as prompt-weighted pairs; grpo against rm_k4 at the answer length of a PPO setting
    stages["dpo"] = {"kind": "dpo", "inputs": {"model": "sft_packed"},
                     "data": {"train": [str(DATA / "reward" / "answer-quality" / "train.jsonl")], "max_length": 96},
                     "samples": {"count": 0}, "train": train(size.reward_steps, 8, 1e-3)}
    batch, length = size.ppo_settings[-1]
    stages["grpo"] = {"kind": "grpo", "inputs": {"model": "sft_packed", "reward": "rm_k4"},
                      "data": {"train": sft_files, "max_length": 64, "validation_fraction": 0.05},
                      "generation": {"num_generations": 4, "max_new_tokens": length}, "evaluation_prompts": 4,
                      "train": train(size.ppo_iterations, batch, 3e-4, lr_scheduler="constant", log_every=1)}
    # the smallest real stage, for the launch overhead of `rlhf run` vs `accelerate launch`
    probe = workdir / "probe.txt"
    probe.write_text((DATA / "pretrain" / "austen" / "persuasion.txt").read_text()[:40_000])
    stages["probe"] = {"kind": "pretrain", "data": {"train": [str(probe)], "validation_fraction": 0.05, "block_size": 64},
                       "model": {"init": {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                          "intermediate_size": 64}, "tokenizer": {"vocab_size": 512}},
                       "train": train(2, 4, 1e-3)}
    # PPO's batch is its rollout_batch_size, so its train block holds only the loop's settings
    ppo_train = lambda steps: {"max_steps": steps, "learning_rate": 3e-4, "lr_scheduler": "constant",  # noqa: E731
                               "log_every": 1, "save_every": 10_000}
    for batch, length in size.ppo_settings:
        stages[f"ppo_b{batch}_t{length}"] = {
            "kind": "ppo", "inputs": {"model": "sft_packed", "reward": "rm_k4"},
            "data": {"train": sft_files, "max_length": 64},
            "generation": {"max_new_tokens": length},
            "ppo": {"rollout_batch_size": batch, "mini_batch_size": batch // 2, "epochs": 2},
            "evaluation": {"prompts": 8, "samples": 0},
            "train": ppo_train(size.ppo_iterations)}
    # the largest setting again, sampling from the top-p nucleus as the shipped real-model pipelines do
    nucleus = copy.deepcopy(stages[f"ppo_b{batch}_t{length}"])
    nucleus["generation"]["top_p"] = PPO_TOP_P
    stages[f"ppo_b{batch}_t{length}_top_p"] = nucleus
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "run", "stages": stages}, sort_keys=False))
    return path


def run_stage_here(pipeline: Path, stage: str) -> dict:
    """Run one stage in this process (as `accelerate launch -m stages.<kind>` would, from step 0); return its
    manifest."""
    config = load_pipeline(pipeline)
    stage_config = config.stages[stage]
    train = importlib.import_module(f"{stage_config.module}.stage").train
    run_stage(train, type(stage_config), ["--config", str(pipeline), "--stage", stage, "--restart"])
    return read_manifest(StageDirs(config.run_dir / stage))


def stage_history(pipeline: Path, stage: str) -> list[dict]:
    """The stage's metrics.jsonl records."""
    return read_history(load_pipeline(pipeline).run_dir / stage / "logs" / "metrics.jsonl")


def artifact(pipeline: Path, stage: str) -> Path:
    """A completed stage's artifact directory."""
    return load_pipeline(pipeline).run_dir / stage / "artifact"
