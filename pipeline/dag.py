"""The stage graph: edges come from each stage's `inputs:`; order is topological (graphlib)."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from typing import Any


def _graph(stages: Mapping[str, Any]) -> dict[str, set[str]]:
    return {name: set(stage.inputs.values()) for name, stage in stages.items()}


def find_cycle(stages: Mapping[str, Any]) -> list[str] | None:
    """The stage names along one cycle (first name repeated at the end), or None."""
    try:
        graphlib.TopologicalSorter(_graph(stages)).prepare()
    except graphlib.CycleError as e:
        # graphlib lists the cycle ending where it starts, walking input -> dependant backwards
        return list(reversed(e.args[1]))
    return None


def topological_order(stages: Mapping[str, Any]) -> list[str]:
    """All stage names, each after its inputs; ties keep the order of the pipeline file."""
    position = {name: i for i, name in enumerate(stages)}
    sorter = graphlib.TopologicalSorter(_graph(stages))
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def downstream(stages: Mapping[str, Any], roots: Iterable[str]) -> set[str]:
    """The given stages and every stage that depends on them, directly or not."""
    dependants: dict[str, set[str]] = {name: set() for name in stages}
    for name, inputs in _graph(stages).items():
        for source in inputs:
            dependants[source].add(name)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(dependants[name])
    return seen
