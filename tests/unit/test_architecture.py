"""The import graph, read from the source (AST), holds the architecture's promises:

- no import cycle between modules;
- the torch-free layers import downward only: `core` (the kernel) imports nothing else, `rows` (row readers)
  only `core`, `measures` (what judges compute) `core` and `rows`, `sections` (shared config sections)
  those three; none imports `pipeline` or `stages`; stage code never imports `pipeline`;
- the orchestrator and those layers reach into `stages` only through the kinds' torch-free `config.py`
  (which may hand out its own kind's torch-free modules and read other kinds' `artifact.py`);
- a kind reaches another kind, and `stages/common` reaches a kind, only through that kind's torch-free
  `artifact.py` (the names and formats of what it produces);
- nothing `rlhf plan` can import reaches torch or the libraries built on it.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("core", "rows", "measures", "sections", "pipeline", "stages")
#: each torch-free layer and the packages it may import
LAYERS = {"core": {"core"}, "rows": {"core", "rows"}, "measures": {"core", "rows", "measures"},
          "sections": {"core", "rows", "measures", "sections"}}
HEAVY = {"torch", "transformers", "accelerate", "trl", "peft", "deepspeed", "datasets", "tokenizers", "safetensors"}


def module_name(path: Path) -> str:
    """core/layout.py -> core.layout; stages/ppo/__init__.py -> stages.ppo."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(internal module -> internal modules it imports, internal module -> top-level external packages it
    imports), counting imports anywhere in a module, inside functions too."""
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    internal: dict[str, set[str]] = {name: set() for name in files}
    external: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod when there is one
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in PACKAGES:
                    if target in files and target != name:
                        internal[name].add(target)
                else:
                    external[name].add(target.split(".")[0])
    return internal, external


INTERNAL, EXTERNAL = import_graph()


def is_kind_config(module: str) -> bool:
    """stages.<kind>.config, or the packages above it (imported on the way)."""
    parts = module.split(".")
    return module == "stages" or (parts[0] == "stages" and parts[1] != "common"
                                  and (len(parts) == 2 or parts[2:] == ["config"]))


def test_the_graph_is_read():
    assert "pipeline.cli" in INTERNAL and "stages.ppo.stage" in INTERNAL and "core.schema" in INTERNAL
    assert {"rows.records", "measures.guard", "sections.common"} <= set(INTERNAL)
    assert "stages.ppo.placement" in INTERNAL["stages.ppo.stage"]
    assert "torch" in EXTERNAL["stages.ppo.placement"] and "accelerate" in EXTERNAL["stages.ppo.stage"]
    assert "stages.ppo.losses" in reachable("stages.ppo.stage")  # the walk that the torch check below relies on


def test_no_import_cycles():
    try:
        graphlib.TopologicalSorter(INTERNAL).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_the_torch_free_layers_import_downward_only():
    wrong = {m: sorted(t for t in targets if t.split(".")[0] not in LAYERS[m.split(".")[0]])
             for m, targets in INTERNAL.items() if m.split(".")[0] in LAYERS}
    assert not {m: t for m, t in wrong.items() if t}
    assert "rows.datasources" in INTERNAL["sections.common"]  # the rule sees the edges it allows


def test_stage_code_never_imports_the_orchestrator():
    wrong = {m: sorted(t for t in targets if t.startswith("pipeline"))
             for m, targets in INTERNAL.items() if m.startswith("stages")}
    assert not {m: t for m, t in wrong.items() if t}


def test_the_orchestrator_reaches_stages_only_through_the_kinds_config_modules():
    """A kind's config may hand out objects of its own kind's torch-free modules (rank's labeling task) and
    read another kind's artifact module; the torch check below keeps everything it reaches torch-free."""
    wrong = {m: sorted(t for t in targets if t.startswith("stages") and not is_kind_config(t)
                       and not (is_kind_config(m) and (kind_of(t) == m.split(".")[1]
                                                       or t.rpartition(".")[2] == "artifact")))
             for m, targets in INTERNAL.items()
             if m.startswith(("pipeline", *LAYERS)) or is_kind_config(m)}
    assert not {m: t for m, t in wrong.items() if t}
    assert {"stages.rank.labeling", "stages.sample.artifact"} <= INTERNAL["stages.rank.config"]  # edges allowed


def kind_of(module: str) -> str | None:
    """stages.ppo.stage -> ppo; stages.common.* -> common; None outside the kinds' folders."""
    parts = module.split(".")
    return parts[1] if parts[0] == "stages" and len(parts) > 2 else None


def test_kinds_and_the_common_code_reach_a_kind_only_through_its_artifact_module():
    wrong = {m: sorted(t for t in targets if kind_of(t) not in (None, "common", kind_of(m))
                       and t.rpartition(".")[2] != "artifact")
             for m, targets in INTERNAL.items() if kind_of(m)}
    assert not {m: t for m, t in wrong.items() if t}
    assert "stages.rank.artifact" in INTERNAL["stages.reward.stage"]  # the rule sees the edges it allows


def kind_branches(source: str, kinds: set[str]) -> list[str]:
    """Comparisons in `source` of something named kind with a kind's name (`r.kind == "ppo"`,
    `kind in ("sft", "dpo")`), as line: code."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        named = {c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        if named & kinds and any("kind" in ast.unparse(o) for o in operands):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_kind_is_named_outside_its_folder():
    """The orchestrator and the torch-free layers ask a kind's config (its hooks: sample_tables, gives_verdict,
    export_leaves_out, batch_description, ...) instead of branching on its name."""
    from pipeline.registry import KINDS

    branches = [f"{path.relative_to(REPO)}:{hit}" for package in (*LAYERS, "pipeline")
                for path in sorted((REPO / package).rglob("*.py"))
                for hit in kind_branches(path.read_text(encoding="utf-8"), set(KINDS))]
    assert not branches, branches
    planted = 'if record.kind == "ppo":\n    pass\nif cfg.kind in ("sft", "dpo"):\n    pass\nif name == "ppo":\n    pass\n'
    assert [hit.split(":")[0] for hit in kind_branches(planted, set(KINDS))] == ["1", "3"]


def reachable(start: str) -> set[str]:
    """Every internal module `start` may import, directly or not (with the packages above each)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # a module's packages run first
        todo += INTERNAL.get(module, ())
    return seen & set(INTERNAL)


#: the one heavy import the orchestrator may make: `datasets` reads non-JSON-lines data for the checks, inside
#: a function (and it does not import torch: test_reading_a_parquet_source_loads_no_torch)
DATA_READER = {"rows.datasources": {"datasets"}}


def test_nothing_rlhf_plan_can_import_reaches_torch():
    modules = reachable("pipeline.cli")
    assert {"pipeline.registry", "stages.ppo.config", "rows.records", "stages.rank.labeling"} <= modules
    heavy = {m: sorted(EXTERNAL[m] & HEAVY - DATA_READER.get(m, set())) for m in modules
             if EXTERNAL[m] & HEAVY - DATA_READER.get(m, set())}
    assert not heavy, f"modules reachable from `rlhf plan` import {heavy}"


def test_reading_a_parquet_source_loads_no_torch(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["p"], "completion": ["c"]}), tmp_path / "rows.parquet")
    probe = ("import sys; from rows.records import sft_problems; "
             f"assert sft_problems([{str(tmp_path / 'rows.parquet')!r}]) == []; "
             "import rows.datasources, pipeline.cli; "
             "print(sorted(m for m in ('torch', 'transformers', 'trl', 'deepspeed') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_every_kind_is_a_folder_with_config_stage_and_main():
    from pipeline.registry import KINDS

    for kind, config in KINDS.items():
        folder = REPO / "stages" / kind
        assert {"config.py", "stage.py", "__main__.py"} <= {p.name for p in folder.iterdir()}, kind
        assert config.module == f"stages.{kind}" and config.__module__ == f"stages.{kind}.config"
