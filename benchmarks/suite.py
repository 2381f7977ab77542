"""The benchmark sections. Each returns rows of one table: ours against a baseline measured in the same
run, as a ratio (these machines are noisy; absolute times are shown for context only)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import baselines, data
from benchmarks.workspace import PPO_TOP_P, Size, artifact, run_stage_here, stage_history


@dataclass
class Row:
    """One line of the results table."""

    section: str
    measure: str
    ours: float | None
    baseline: float | None
    unit: str
    note: str = ""
    lower_is_better: bool = False  # times: the ratio is then baseline ÷ ours, so > 1 always means ours is better

    @property
    def ratio(self) -> float | None:
        if not self.ours or not self.baseline:
            return None
        return self.baseline / self.ours if self.lower_is_better else self.ours / self.baseline


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def peak_matmul_flops(quick: bool) -> tuple[float, str]:
    """The best of several timed square matmuls: fp32 on CPU, bf16 on GPU (FLOP/s, dtype)."""
    import torch

    dev = device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    n = (1024 if quick else 2048) if dev == "cpu" else 8192
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    best = float("inf")
    for _ in range(3 if quick else 8):
        if dev == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best, str(dtype).removeprefix("torch.")


def best_of(rounds: int, ours, baseline) -> tuple[float, float]:
    """The best rate of each of two measurements over `rounds` rounds, alternating which goes first (the
    first run of a process pays warm-up costs; these machines are noisy)."""
    best_ours = best_base = 0.0
    for i in range(rounds):
        for measure in ((ours, baseline) if i % 2 == 0 else (baseline, ours)):
            rate = measure()
            if measure is ours:
                best_ours = max(best_ours, rate)
            else:
                best_base = max(best_base, rate)
    return best_ours, best_base


def pretrain(pipeline: Path, peak: float, rounds: int) -> list[Row]:
    """Our pretrain stage vs a plain Trainer: tokens/s and model-FLOPs utilisation."""
    found = {}

    def ours() -> float:
        found["manifest"] = manifest = run_stage_here(pipeline, "pre")
        return manifest["metrics"]["train/tokens"] / manifest["metrics"]["train/runtime_s"]

    def baseline() -> float:
        if "manifest" not in found:
            ours()
        return baselines.hf_trainer_pretrain(found["manifest"], artifact(pipeline, "pre")).rate

    rate, base = best_of(rounds, ours, baseline)
    params = found["manifest"]["metrics"]["model/parameters"]
    mfu = lambda r: 6 * params * r / peak  # noqa: E731
    note = f"best of {rounds}" if rounds > 1 else "one run each"
    return [Row("pretrain", "tokens/s vs HF Trainer", rate, base, "tok/s", f"{params / 1e6:.2f} M params; {note}"),
            Row("pretrain", "MFU (6·N·tokens/s ÷ peak)", mfu(rate), mfu(base), "", "N counts every parameter")]


def sft(pipeline: Path, rounds: int) -> list[Row]:
    """Our SFT stage, packed and padded, vs TRL's SFTTrainer padded and packed (tokens/s, real tokens)."""
    model = artifact(pipeline, "pre")

    def ours(stage: str):
        def measure() -> float:
            m = run_stage_here(pipeline, stage)["metrics"]
            return m["train/tokens"] / m["train/runtime_s"]
        return measure

    def trl(stage: str, packing: bool):
        return lambda: baselines.trl_sft(run_manifest(pipeline, stage), model, packing=packing).rate

    packed, padded_trl = best_of(rounds, ours("sft_packed"), trl("sft_padded", False))
    padded, packed_trl = best_of(rounds, ours("sft_padded"), trl("sft_packed", True))
    note = "variable-length chat data"
    return [Row("sft", "ours, packed vs TRL padded", packed, padded_trl, "tok/s", note),
            Row("sft", "ours, padded vs TRL padded", padded, padded_trl, "tok/s", note),
            Row("sft", "ours, packed vs TRL packed", packed, packed_trl, "tok/s", "TRL flattens a batch into one row"),
            Row("sft", "TRL packed vs TRL padded", packed_trl, padded_trl, "tok/s", "the library alone")]


def reward(pipeline: Path) -> list[Row]:
    """Our K-wise reward stage vs TRL's RewardTrainer on the same rankings as pairs (ranked prompts/s)."""
    rows = []
    for stage, k in (("rm_k4", 4), ("rm_k8", 8)):
        manifest = run_stage_here(pipeline, stage)
        m = manifest["metrics"]
        ours = m["train/steps"] * manifest["config"]["train"]["batch_size"] / m["train/runtime_s"]
        base, per_prompt = baselines.trl_reward_on_pairs(manifest, artifact(pipeline, "sft_packed"))
        rows.append(Row("reward", f"K={k}: K-wise vs pairs (TRL)", ours, base.rate, "prompts/s",
                        f"{per_prompt:.1f} pairs per prompt"))
    return rows


def run_manifest(pipeline: Path, stage: str) -> dict:
    """A stage's config as its manifest would hold it, without running it (for the baselines)."""
    from pipeline.config import load_pipeline

    return {"config": load_pipeline(pipeline).stages[stage].model_dump(mode="json")}


def ppo(pipeline: Path, size: Size) -> list[Row]:
    """PPO per rollout batch and response length: samples/s, s per iteration, where the time goes, peak memory.
    The baseline column is the first setting (ratios show how throughput scales)."""
    rows, first = [], None
    for batch, length in size.ppo_settings:
        stage = f"ppo_b{batch}_t{length}"
        reset_peak_memory()
        run_stage_here(pipeline, stage)
        peak = peak_memory_gb()
        history = [r for r in stage_history(pipeline, stage) if "time/iteration" in r][1:]  # first: warm-up
        def mean(key: str, records: list[dict] = history) -> float:
            return statistics.fmean(r[key] for r in records)

        per_iteration = mean("time/iteration")
        rate = batch / per_iteration
        first = first or rate
        split = "/".join(f"{100 * mean(f'time/{part}') / per_iteration:.0f}" for part in ("generate", "score", "train"))
        rows.append(Row("ppo", f"batch {batch}, {length} tokens", rate, first, "samples/s",
                        f"{per_iteration:.2f} s/iter; generate/score/train % {split}; peak {peak:.2f} GB"))
    rows.append(ppo_top_p(pipeline, size, rows[-1].ours))
    return rows


def ppo_top_p(pipeline: Path, size: Size, full_distribution_rate: float) -> Row:
    """The largest PPO setting sampling from the top-p nucleus, against itself on the whole distribution: what
    the nucleus costs (rebuilt for every log-prob of the rollout and of each update)."""
    batch, length = size.ppo_settings[-1]
    stage = f"ppo_b{batch}_t{length}_top_p"
    run_stage_here(pipeline, stage)
    history = [r for r in stage_history(pipeline, stage) if "time/iteration" in r][1:]
    per_iteration = statistics.fmean(r["time/iteration"] for r in history)
    score, train = (statistics.fmean(r[f"time/{part}"] for r in history) for part in ("score", "train"))
    return Row("ppo", f"batch {batch}, {length} tokens, top-p {PPO_TOP_P}", batch / per_iteration,
               full_distribution_rate, "samples/s",
               f"{per_iteration:.2f} s/iter (score {score:.2f}, train {train:.2f}); baseline: top-p 1")


def reset_peak_memory() -> None:
    """Start a new peak: CUDA's allocator counter, or Linux's resident-set high-water mark."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_memory_gb() -> float:
    """GPU memory allocated at the peak, or the process's peak resident memory on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _wall(cmd: list[str], repeat: int) -> float:
    """Median wall time of a command (it must succeed)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def orchestrator(pipeline: Path, quick: bool) -> list[Row]:
    """`rlhf plan` and a fully fresh `rlhf run` (wall, s), and the smallest stage under `rlhf run` vs
    `accelerate launch` by hand (process start-up included: what the runner adds on top)."""
    rlhf = [sys.executable, "-m", "pipeline.cli"]
    repeat = 3 if quick else 5
    run_stage_here(pipeline, "probe")  # every stage complete: the next `rlhf run` has nothing to do
    plan = _wall(rlhf + ["plan", str(pipeline)], repeat)
    fresh = _wall(rlhf + ["run", str(pipeline)], repeat)
    by_runner = _wall(rlhf + ["run", str(pipeline), "--only", "probe", "--restart", "probe"], 1)
    by_hand = _wall([sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_machines", "1",
                     "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", "1",
                     "-m", "stages.pretrain", "--config", str(pipeline), "--stage", "probe", "--restart"], 1)
    return [Row("orchestrator", "rlhf plan", plan, None, "s", "goal < 1 s", lower_is_better=True),
            Row("orchestrator", "rlhf run, all fresh", fresh, None, "s", "goal < 2 s", lower_is_better=True),
            Row("orchestrator", "one stage: rlhf run vs accelerate launch", by_runner, by_hand, "s",
                f"overhead {by_runner - by_hand:+.1f} s", lower_is_better=True)]


def data_checks(workdir: Path, quick: bool) -> list[Row]:
    """Checking and fingerprinting a preference set (1 M rows; 20 k quick) as JSON lines and Parquet: our
    streamed checks vs the rows parsed into a list (time and peak resident memory, each in a fresh process)."""
    rows = 20_000 if quick else 1_000_000
    return [Row("data", f"check {rows:,} rows ({name}): {measure}", ours, baseline, unit,
                "vs the rows parsed into a list", lower_is_better=True)
            for name, measure, ours, baseline, unit in data.rows_table(workdir / "data", rows)]


def dpo(pipeline: Path) -> list[Row]:
    """Our dpo stage vs TRL's DPOTrainer called directly on the same pairs (pairs/s): what the wrapper costs."""
    manifest = run_stage_here(pipeline, "dpo")
    m = manifest["metrics"]
    ours = m["train/steps"] * manifest["config"]["train"]["batch_size"] / m["train/runtime_s"]
    base = baselines.trl_dpo(manifest, artifact(pipeline, "sft_packed"))
    return [Row("dpo", "ours vs TRL DPOTrainer", ours, base.rate, "pairs/s", "same pairs, model, batch and steps")]


def grpo(pipeline: Path, size: Size) -> list[Row]:
    """Our grpo stage vs TRL's GRPOTrainer called directly (answers/s), and PPO vs GRPO: seconds per 1,000
    answers at equal answer length (PPO's iterations after the first, GRPO's training loop)."""
    manifest = run_stage_here(pipeline, "grpo")
    m = manifest["metrics"]
    ours = m["train/answers"] / m["train/runtime_s"]
    base = baselines.trl_grpo(manifest, artifact(pipeline, "sft_packed"), artifact(pipeline, "rm_k4"))
    batch, length = size.ppo_settings[-1]
    history = [r for r in stage_history(pipeline, f"ppo_b{batch}_t{length}") if "time/iteration" in r][1:]
    ppo_per_1000 = 1000 * statistics.fmean(r["time/iteration"] for r in history) / batch
    return [Row("grpo", "ours vs TRL GRPOTrainer", ours, base.rate, "answers/s",
                "TRL scores with the reward model its own way"),
            Row("grpo", f"GRPO vs PPO: s per 1,000 answers of {length} tokens", 1000 / ours, ppo_per_1000, "s",
                f"PPO: {batch} prompts per iteration, 2 epochs; GRPO: {batch} answers per step, K = 4",
                lower_is_better=True)]
