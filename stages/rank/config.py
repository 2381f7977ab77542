"""The `rank` kind's config: who ranks the sampled answers (torch-free); the labelers are in sections.labelers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from core.layout import StageDirs
from core.numbers import fmt, percent
from core.schema import StageConfig, volatile
from sections.common import Problems
from sections.labelers import Labeler
from stages.rank.labeling import LabelingTask, labeling_task, ranked_by_labeler
from stages.rank.labels import label_views, labeled_count
from stages.sample.artifact import SAMPLES_FILE, sample_keys


class RankStage(StageConfig):
    """A labeler orders each prompt's K sampled answers (ties allowed): the reward model's training data."""

    kind: Literal["rank"]
    labeler: Labeler
    seed: int = 0
    save_every: int = volatile(32, ge=1, description="prompts between checkpoints (the rankings so far)")

    module = "stages.rank"
    # 2: empty answers are left out of a ranking row
    version = 2
    input_roles = {"samples": True, "judge": False}
    headline = ("rank/prompts", "rank/tie_share", "rank/length_tau")
    live = ("rank/prompts",)
    about = ("Each prompt's sampled answers, ordered by the labeler. Rows where every answer ties teach nothing "
             "and are dropped. A length correlation near 1 means the labeler mostly rewards long answers, and "
             "so will the reward model.")

    def input_problems(self) -> Problems:
        """A labeler that can run: an importable rule, exactly one judge model, or people."""
        return self.labeler.source_problems(self.inputs, ("labeler",))

    def labeled_by_people(self) -> bool:
        """People rank when the labeler's kind is human."""
        return self.labeler.by_people

    def labeling_task(self, *, name: str, run_dir: Path) -> LabelingTask:
        """The samples of the input sample stage, and this stage's labels file."""
        return labeling_task(stage=name, source=self.inputs["samples"], run_dir=run_dir,
                             min_labeled=self.labeler.min_labeled, double_labeled=self.labeler.double_labeled,
                             guidelines=self.labeler.guidelines)

    def state_files(self, stage_dir: Path) -> list[Path]:
        """People's labels, when people rank."""
        return [StageDirs(stage_dir).labels] if self.labeler.by_people else []

    def awaiting(self, run_dir: Path, name: str) -> str | None:
        """"awaiting labels n/N" while people have ranked fewer than `min_labeled` of the sampled prompts."""
        if not self.labeler.by_people:
            return None
        labels_path = StageDirs.of(run_dir, name).labels
        labels, people = label_views(labels_path)
        labeled = labeled_count(labels,
                                sample_keys(StageDirs.of(run_dir, self.inputs["samples"]).artifact / SAMPLES_FILE))
        if labeled >= self.labeler.min_labeled:
            return None
        people = ", ".join(f"{person or 'unnamed'} {n}" for person, n in ranked_by_labeler(people).items())
        return f"awaiting labels {labeled}/{self.labeler.min_labeled}" + (f" ({people})" if people else "")

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """Rows ranked and dropped, ties, and the length preference."""
        if metrics.get("rank/prompts") is None:
            return ""
        return (f"{metrics['rank/prompts']} prompts ranked ({metrics['rank/dropped_all_tied']} dropped with every "
                f"answer tied); {percent(metrics['rank/tie_share'])} of answer pairs tied; Kendall tau of preference and "
                f"length {fmt(metrics['rank/length_tau'])}." + (
                    f" People ranked them ({metrics['rank/skipped_by_people']} skipped, "
                    f"{metrics['rank/flagged_by_people']} flagged)." if "rank/labeled_by_people" in metrics else "") + (
                    f" On the {metrics['rank/agreement_prompts']} prompts two people ranked, they ordered "
                    f"{percent(metrics['rank/agreement_pairwise'])} of answer pairs alike (Kendall's W "
                    f"{fmt(metrics['rank/kendalls_w'])})." if "rank/agreement_prompts" in metrics else ""))
