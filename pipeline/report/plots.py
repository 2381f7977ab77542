"""The report's PNG plots (matplotlib, no display needed), each drawn from a stage's metric history."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from core.history import series
from core.schema import Panel


def _pyplot():
    # matplotlib takes ~0.5 s to import: only when a plot is drawn, never for `rlhf plan/status`
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: series longer than this are drawn faint with a moving average over them
SMOOTH_ABOVE = 30


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (shorter at the start), same length as `values`."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _against(history: list[dict], key: str, x: str | None) -> tuple[list[float], list[float]]:
    """(x values, values) of one metric: against the step, or against metric `x` logged at the same steps."""
    steps, values = series(history, key)
    if x is None:
        return steps, values
    xs = dict(zip(*series(history, x)))
    pairs = [(xs[s], v) for s, v in zip(steps, values) if s in xs]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _panel(ax, history: list[dict], lines: list[tuple[str, str]], *, title: str, ylabel: str, xlabel: str = "step",
           x: str | None = None) -> bool:
    """Draw `lines` ((metric key, label)) on one axis, against the step or metric `x`; False when none has a
    value. Against a metric, the points are joined in step order and the first is circled (where training began)."""
    drawn = False
    for key, label in lines:
        steps, values = _against(history, key, x)
        if x is not None:
            if steps:
                line, = ax.plot(steps, values, marker="o", markersize=4, label=label)
                ax.plot(steps[:1], values[:1], marker="o", markersize=10, fillstyle="none", color=line.get_color())
            drawn = drawn or bool(steps)
            continue
        if len(steps) > SMOOTH_ABOVE:  # noisy per-iteration values: faint, with a moving average on top
            line, = ax.plot(steps, values, alpha=0.3, linewidth=1)
            ax.plot(steps, moving_average(values, max(3, len(values) // 10)), color=line.get_color(),
                    label=f"{label} (moving average)")
        elif steps:
            ax.plot(steps, values, marker="o" if len(steps) < 12 else None, markersize=4, label=label)
        drawn = drawn or bool(steps)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn and (len(lines) > 1 or (x is None and len(series(history, lines[0][0])[0]) > SMOOTH_ABOVE)):
        ax.legend(fontsize=8)
    if not drawn:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    return drawn


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # a legend below the axes: bbox_inches="tight" makes room for it
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def panels_plot(history: list[dict], panels: tuple[Panel, ...], title: str, *, path: Path) -> Path:
    """A stage's panels (its kind's `panels`) side by side, or two by two for four; a single panel without a
    title of its own takes the stage's."""
    plt = _pyplot()
    columns = 2 if len(panels) in (2, 4) else min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    width = {1: 7, 2: 10, 3: 11}[columns]
    fig, axes = plt.subplots(rows, columns, figsize=(width, 3.4 if rows == 1 else 3 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _panel(ax, history, list(panel.lines), title=panel.title or title, ylabel=panel.ylabel, xlabel=panel.xlabel,
               x=panel.x)
        if panel.reference is not None:
            ax.axhline(panel.reference, color="grey", linestyle=":", linewidth=1)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if len(panels) > 1 or panels[0].title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def time_plot(rows: list[tuple[str, float, float | None]], path: Path) -> Path:
    """Wall time per stage ((stage, wall seconds, training seconds or None)), training time shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.45 * len(rows)))
    names = [r[0] for r in rows][::-1]
    wall = [r[1] for r in rows][::-1]
    training = [min(r[2], r[1]) if r[2] is not None else 0.0 for r in rows][::-1]
    ax.barh(names, training, color="#2f81f7", label="training loop")
    ax.barh(names, [w - t for w, t in zip(wall, training)], left=training, color="#9ec5fe",
            label="start-up, data, evaluation, saving")
    for y, w in enumerate(wall):
        ax.text(w, y, f" {w:.0f} s", va="center", fontsize=8)
    ax.set_xlabel("wall time (s)")
    ax.set_xlim(0, max(wall, default=1) * 1.15 or 1)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35 - 0.5 / len(rows)), ncol=2, frameon=False)
    ax.set_title("time per stage", fontsize=10)
    return _save(fig, path)


def policies_plot(policies: list[dict], baseline: str | None, title: str, *, path: Path) -> Path:
    """An evaluation's policies: judge score against KL to the reference (both with 95% intervals), and win
    rate against the baseline with its interval beside the 0.5 of a coin toss."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for entry in policies:
        x, y = entry["kl"], entry["judge_score"]
        left.errorbar([x], [y], xerr=[[x - entry["kl_low"]], [entry["kl_high"] - x]],
                      yerr=[[y - entry["judge_score_low"]], [entry["judge_score_high"] - y]], fmt="o", capsize=3,
                      label=entry["name"])
        left.annotate(entry["name"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    left.set_xlabel("KL to reference (nats per answer)")
    left.set_ylabel("judge score")
    left.set_title("judge score against KL", fontsize=10)
    left.grid(alpha=0.3)
    others = [e for e in policies if e["name"] != baseline]
    names = [e["name"] for e in others]
    rates = [e["win_rate"] for e in others]
    errors = [[r - e["win_rate_low"] for r, e in zip(rates, others)], [e["win_rate_high"] - r for r, e in zip(rates, others)]]
    right.bar(names, rates, yerr=errors, capsize=4, color="#2f81f7")
    right.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    right.set_ylim(0, 1)
    right.set_ylabel(f"win rate vs {baseline}")
    right.set_title("paired win rate (ties count half)", fontsize=10)
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def runs_plot(curves: dict[str, tuple[list[float], list[float]]], title: str, *, ylabel: str, path: Path) -> Path:
    """One metric of the same stage in several runs: run label -> (steps, values), one line each."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _save(fig, path)
