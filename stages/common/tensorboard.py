"""Tensorboard events for the stages that train nothing (sample, rank, eval): their numeric manifest metrics,
under logs/tensorboard like every stage's, so `tensorboard --logdir RUN_DIR` shows the whole run."""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter

from stages.common.entry import StageContext


def write_scalars(ctx: StageContext, metrics: dict, *, step: int) -> None:
    """The numeric entries of `metrics` at `step` (main process only; lists, strings and None are skipped)."""
    writer = SummaryWriter(log_dir=str(ctx.dirs.logs / "tensorboard" / ctx.name))
    try:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, global_step=step)
    finally:
        writer.close()
