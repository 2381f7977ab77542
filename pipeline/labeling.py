"""`rlhf label`: which stage people label. The stage's kind owns the rest (its config's `labeling_task`: the
items, the page, the import and export formats); pipeline.label_server serves it."""

from __future__ import annotations

from core.errors import InputError
from core.schema import PeopleLabeling
from pipeline.config import Pipeline


def labeling_task(pipeline: Pipeline, stage: str | None = None) -> PeopleLabeling:
    """The task of the stage people label: `stage`, or the pipeline's only one labeled by people."""
    people = [name for name, cfg in pipeline.stages.items() if cfg.labeled_by_people()]
    if stage is None:
        if len(people) != 1:
            found = ", ".join(people) or "none"
            raise InputError(f"{pipeline.path}: expected one stage labeled by people (a rank stage with labeler kind "
                             f"human), found {found}" + ("; name it with --stage" if people else ""))
        stage = people[0]
    elif stage not in people:
        raise InputError(f"--stage {stage}: not a stage labeled by people (a rank stage with labeler kind human; "
                         f"those are: {', '.join(people) or 'none'})")
    return pipeline.stages[stage].labeling_task(name=stage, run_dir=pipeline.run_dir)
