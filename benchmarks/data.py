"""Checking and fingerprinting a large preference set: our streamed row checks against reading the same rows
into a Python list (what the checks did before), time and peak memory, each in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: each probe prints {"seconds": ..., "peak_gb": ...}; the process's peak resident set is its own
_PROBE = """
import json, sys, time
from pathlib import Path
path = sys.argv[2]
start = time.perf_counter()
if sys.argv[1] == "ours":
    from core.hashing import sha256_file
    from rows.records import ranking_problems
    assert ranking_problems([path]) == []
    sha256_file(Path(path))
elif sys.argv[1] == "list":
    from rows.records import ranking_row
    if path.endswith(".jsonl"):
        rows = [ranking_row(json.loads(line)) for line in open(path, encoding="utf-8")]
    else:
        import datasets
        rows = [ranking_row(r) for r in datasets.load_dataset("parquet", data_files=path, split="train").to_list()]
seconds = time.perf_counter() - start
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024 / 1e9
print(json.dumps({"seconds": seconds, "peak_gb": peak}))
"""


def preference_set(directory: Path, rows: int) -> dict[str, Path]:
    """`rows` UltraFeedback-like preference rows (explicit prompt, conversational chosen/rejected) as JSON
    lines and as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    jsonl, parquet = directory / f"prefs-{rows}.jsonl", directory / f"prefs-{rows}.parquet"
    if not (jsonl.is_file() and parquet.is_file()):
        def row(i: int) -> dict:
            prompt = f"Question {i}: explain item {i % 997} in a sentence or two, please."
            return {"prompt": prompt,
                    "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"A clear answer {i}."}],
                    "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"Unclear {i}."}]}
        with open(jsonl, "w", encoding="utf-8") as f:
            for start in range(0, rows, 100_000):
                f.write("".join(json.dumps(row(i)) + "\n" for i in range(start, min(rows, start + 100_000))))
        writer = None
        for start in range(0, rows, 100_000):
            table = pa.Table.from_pylist([row(i) for i in range(start, min(rows, start + 100_000))])
            writer = writer or pq.ParquetWriter(parquet, table.schema)
            writer.write_table(table)
        writer.close()
    return {"jsonl": jsonl, "parquet": parquet}


def probe(how: str, path: Path, cache: Path) -> dict:
    """One measurement in a fresh process (datasets' Arrow cache in `cache`, built by the first reader)."""
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache))
    result = subprocess.run([sys.executable, "-c", _PROBE, how, str(path)], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def rows_table(directory: Path, rows: int) -> list[tuple[str, str, float, float, str]]:
    """(format, measure, ours, baseline, unit) for checking + fingerprinting `rows` rows, ours (streamed) vs a
    list of parsed rows; the Parquet file's Arrow cache is built once before either is timed."""
    files = preference_set(directory, rows)
    cache = directory / "datasets-cache"
    probe("ours", files["parquet"], cache)  # datasets converts the file once; both readers then map it
    out = []
    for name, path in files.items():
        ours, listed = probe("ours", path, cache), probe("list", path, cache)
        out += [(name, "time", ours["seconds"], listed["seconds"], "s"),
                (name, "peak memory", ours["peak_gb"], listed["peak_gb"], "GB")]
    return out
