"""`python -m benchmarks [--quick] [--workdir DIR] [--json FILE]`: every section, then one table."""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import suite
from benchmarks.generation import generation, ppo_engines
from benchmarks.workspace import FULL, QUICK, pipeline_file


def machine() -> str:
    """CPU or GPU model, core count, and the library versions that matter."""
    import os

    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads){gpu}; torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def table(rows: list[suite.Row], peak: float, dtype: str, *, title: str) -> str:
    """The results as a Markdown table (printed, and pasted into RESULTS.md)."""
    def num(value: float | None, unit: str) -> str:
        if value is None:
            return "–"
        if unit == "":  # a fraction
            return f"{100 * value:.2f} %"
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"

    lines = [f"**{title}** — peak matmul ({dtype}): {peak / 1e9:,.1f} GFLOP/s", "",
             "| section | measure | ours | baseline | unit | ratio | notes |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"**{r.ratio:.2f}×**" if r.ratio is not None else "–"
        lines.append(f"| {r.section} | {r.measure} | {num(r.ours, r.unit)} | {num(r.baseline, r.unit)} | {r.unit} | "
                     f"{ratio} | {r.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: about 2 minutes on a 2-core CPU (CI smoke test)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench"), help="where the benchmark pipeline runs")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    size = QUICK if args.quick else FULL
    started = time.perf_counter()
    pipeline = pipeline_file(args.workdir.resolve() / ("quick" if args.quick else "full"), size)
    peak, dtype = suite.peak_matmul_flops(args.quick)
    rows, timings = [], {}
    rounds = 1 if args.quick else 2
    for name, section in (("pretrain", lambda: suite.pretrain(pipeline, peak, rounds)),
                          ("sft", lambda: suite.sft(pipeline, rounds)),
                          ("reward", lambda: suite.reward(pipeline)), ("ppo", lambda: suite.ppo(pipeline, size)),
                          ("dpo", lambda: suite.dpo(pipeline)), ("grpo", lambda: suite.grpo(pipeline, size)),
                          ("orchestrator", lambda: suite.orchestrator(pipeline, args.quick)),
                          ("data", lambda: suite.data_checks(args.workdir.resolve(), args.quick)),
                          ("generation", lambda: generation(args.workdir.resolve(), args.quick)
                                          + ppo_engines(args.workdir.resolve(), args.quick))):
        start = time.perf_counter()
        rows += section()
        timings[name] = time.perf_counter() - start
        print(f"[benchmarks] {name} done in {timings[name]:.0f} s", flush=True)
    title = f"{'quick' if args.quick else 'full'} mode on {suite.device()}: {machine()}"
    text = table(rows, peak, dtype, title=title)
    spent = ", ".join(f"{name} {t:.0f} s" for name, t in timings.items())
    print("\n" + text + f"\n\n(benchmark wall time {time.perf_counter() - started:.0f} s: {spent})")
    if args.json:
        args.json.write_text(json.dumps({"machine": title, "peak_flops": peak, "dtype": dtype,
                                         "rows": [dict(asdict(r), ratio=r.ratio) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
