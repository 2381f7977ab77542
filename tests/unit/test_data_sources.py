"""Data sources: every local format and a Hub dataset at a pinned revision read to the same rows, bad rows named
by source and row, the commit in the fingerprint, and `rlhf plan` refusing what `rlhf run` would refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rows.datasources import DataSource
from rows.records import ranking_problems, read_rows, sft_problems, sft_row
from tests.helpers import REPO, hub_dataset_cache, rlhf, write_pipeline

ROWS = [{"prompt": f"What is {i} + {i}?", "completion": f"{2 * i}."} for i in range(6)]
COMMIT = "a" * 40


def write_every_format(directory) -> dict[str, str]:
    """The same rows as .jsonl, .json, .parquet, .csv, .arrow and a save_to_disk folder."""
    import datasets

    table = pa.Table.from_pylist(ROWS)
    paths = {suffix: directory / f"rows{suffix}" for suffix in (".jsonl", ".json", ".parquet", ".csv", ".arrow")}
    paths[".jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    paths[".json"].write_text(json.dumps(ROWS))
    pq.write_table(table, paths[".parquet"])
    paths[".csv"].write_text("prompt,completion\n" + "".join(f'"{r["prompt"]}",{r["completion"]}\n' for r in ROWS))
    with pa.OSFile(str(paths[".arrow"]), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    datasets.Dataset.from_list(ROWS).save_to_disk(str(directory / "saved"))
    paths["save_to_disk"] = directory / "saved"
    return {name: str(path) for name, path in paths.items()}


def test_every_local_format_gives_the_same_rows(tmp_path):
    expected = [sft_row(r) for r in ROWS]
    for name, path in write_every_format(tmp_path).items():
        rows, bad = read_rows(DataSource(path=path), sft_row)
        assert (rows, bad) == (expected, []), name


def test_columns_select_and_rename(tmp_path):
    path = tmp_path / "theirs.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": r["prompt"], "response": r["completion"], "id": 1} for r in ROWS]), path)
    source = DataSource(path=str(path), columns={"question": "prompt", "response": "completion"})
    assert read_rows(source, sft_row)[0] == [sft_row(r) for r in ROWS]
    problems = sft_problems([DataSource(path=str(path), columns={"query": "prompt"})])
    assert problems[0].startswith(f"{path} row 0: no column 'query' (columns: question, response, id)")


def test_bad_rows_of_a_parquet_file_are_named_by_row_and_plan_refuses_them(tmp_path):
    path = tmp_path / "prefs.parquet"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3 + [{"prompt": "p", "chosen": "a", "rejected": ""}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert ranking_problems([str(path)]) == [f"{path} row 3: rejected is empty"]
    assert ranking_problems([str(path)], skip_bad_rows=True) == []

    # `rlhf plan` checks the rows as `rlhf run` does: a plan that says run does not then refuse
    stage = {"kind": "reward", "model": {"path": str(tmp_path)}, "data": {"train": [str(path)]},
             "train": {"max_steps": 1}}
    (tmp_path / "config.json").write_text("{}")
    pipeline = write_pipeline(tmp_path / "p.yaml", {"reward": stage})
    planned = rlhf("plan", pipeline)
    assert planned.returncode == 2 and f"{path} row 3: rejected is empty" in planned.stdout + planned.stderr


def test_unsupported_formats_are_refused_at_config_time(tmp_path):
    (tmp_path / "rows.xlsx").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unsupported format '\.xlsx'"):
        DataSource(path=str(tmp_path / "rows.xlsx"))
    with pytest.raises(ValueError, match="exactly one of path, hub"):
        DataSource()
    with pytest.raises(ValueError, match="expected owner/name@revision"):
        DataSource(hub="Anthropic/hh-rlhf")


HUB_PROBE = """
import json, sys
from rows.datasources import DataSource, hub_records
from core.errors import InputError
from core.fingerprint import semantic_config
from core.hashing import FileHasher
from rows.records import ranking_problems, ranking_row, read_rows
source = DataSource(hub="org/feedback@main", split="train_prefs")
out = {"answers": [r["answers"] for r in read_rows(source, ranking_row)[0]],
       "test_rows": len(read_rows(DataSource(hub="org/feedback@main", split="test_prefs"), ranking_row)[0]),
       "no_split": ranking_problems([DataSource(hub="org/feedback@main", split="nope")]),
       "fingerprinted": semantic_config(source, FileHasher())["hub"], "record": hub_records([source])}
try:
    read_rows(DataSource(hub="org/missing@main"), ranking_row)
except InputError as e:
    out["missing"] = e.problems
print(json.dumps(out))
"""


def probe_hub(cache) -> dict:
    """HUB_PROBE in a fresh process: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when imported."""
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", HUB_PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_hub_dataset_is_read_at_its_revision_from_the_filled_cache(tmp_path):
    prefs = [{"prompt": "p", "chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": f"good {i}"}],
              "rejected": [{"role": "user", "content": "p"}, {"role": "assistant", "content": f"bad {i}"}]} for i in range(4)]
    yaml = ("configs:\n- config_name: default\n  data_files:\n  - split: train_prefs\n    path: data/train_prefs-*\n"
            "  - split: test_prefs\n    path: data/test_prefs-*")
    hub_dataset_cache(tmp_path / "hub", "org/feedback", COMMIT, splits={"train_prefs": prefs, "test_prefs": prefs[:2]},
                      config_yaml=yaml)
    out = probe_hub(tmp_path / "hub")
    assert out["answers"] == [[f"good {i}", f"bad {i}"] for i in range(4)]
    assert out["test_rows"] == 2
    assert out["no_split"][0].startswith("org/feedback@main [nope]: ") and "train_prefs" in out["no_split"][0]
    # the fingerprint and the manifest hold the commit the branch names
    assert out["fingerprinted"] == {"hub": "org/feedback", "commit": COMMIT}
    assert out["record"] == [{"hub": "org/feedback", "revision": "main", "commit": COMMIT, "config": None,
                              "split": "train_prefs", "columns": None}]
    assert out["missing"][0].startswith("org/missing@main: not in the HF cache and the Hub cannot be reached")

    # the branch moves: the fingerprint follows it
    hub_dataset_cache(tmp_path / "hub", "org/feedback", "b" * 40, splits={"train_prefs": prefs[:1], "test_prefs": prefs[:1]},
                      config_yaml=yaml)
    out = probe_hub(tmp_path / "hub")
    assert out["fingerprinted"]["commit"] == "b" * 40 and len(out["answers"]) == 1


def test_a_corpus_source_needs_a_text_column(tmp_path):
    from rows.corpus import corpus_problems, read_documents

    path = tmp_path / "web.parquet"
    pq.write_table(pa.table({"content": ["a page.", "another page."]}), path)
    assert corpus_problems([str(path)]) == [f'{path} row 0: expected a non-empty string "text" (columns: content; '
                                            "rename one with the entry's columns)"]
    assert read_documents(DataSource(path=str(path), columns={"content": "text"})) == ["a page.", "another page."]
