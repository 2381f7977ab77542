"""The K-wise ranking loss and the ranking metrics of a reward model (pure functions, tested by hand).

A batch holds B prompts padded to K answer slots: `scores` [B, K] (float) and `ranks` [B, K] (int, lower is
better, <= 0 marks an empty slot). A pair (i, j) of one prompt counts when both slots are filled and
rank_i < rank_j; tied answers are never paired.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def preference_pairs(ranks: torch.Tensor) -> torch.Tensor:
    """[B, K, K] bool: entry (b, i, j) is True when answer i of prompt b is strictly better than answer j."""
    filled = ranks > 0
    return filled[:, :, None] & filled[:, None, :] & (ranks[:, :, None] < ranks[:, None, :])


def kwise_ranking_loss(scores: torch.Tensor, ranks: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """InstructGPT's loss: per prompt, the mean of -log sigmoid(r_better - r_worse - margin) over its untied
    pairs; then the mean over prompts, so every prompt weighs the same whatever its K."""
    pairs = preference_pairs(ranks)
    diff = scores[:, :, None] - scores[:, None, :] - margin
    per_pair = -F.logsigmoid(diff) * pairs
    counts = pairs.sum(dim=(1, 2))
    has_pairs = counts > 0
    per_prompt = per_pair.sum(dim=(1, 2))[has_pairs] / counts[has_pairs]
    return per_prompt.mean()


def scores_by_prompt(flat_scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Scatter scores of the filled slots, in row-major order, into [B, K] (0 in empty slots)."""
    out = flat_scores.new_zeros(ranks.shape)
    out[ranks > 0] = flat_scores
    return out


def ranking_metrics(scores: np.ndarray, ranks: np.ndarray) -> dict[str, float]:
    """Held-out metrics over all prompts.

    - pairwise_accuracy: share of untied pairs (over all prompts) scored in the right order
    - margin: mean r_better - r_worse over those pairs
    - ranking_accuracy: share of prompts with K > 2 whose untied pairs are all in the right order
    - kendall_tau: mean tau-b between scores and the human ranking over prompts with K > 2
    """
    correct = margin_sum = pairs_total = 0
    whole, taus = [], []
    for row_scores, row_ranks in zip(scores, ranks):
        filled = row_ranks > 0
        s, r = row_scores[filled].astype(np.float64), row_ranks[filled]
        better = r[:, None] < r[None, :]
        diff = (s[:, None] - s[None, :])[better]
        if diff.size == 0:
            continue
        correct += int((diff > 0).sum())
        margin_sum += float(diff.sum())
        pairs_total += diff.size
        if len(r) > 2:
            whole.append(bool((diff > 0).all()))
            taus.append(kendall_tau_b(s, -r.astype(np.float64)))
    return {
        "pairwise_accuracy": correct / pairs_total if pairs_total else float("nan"),
        "margin": margin_sum / pairs_total if pairs_total else float("nan"),
        "ranking_accuracy": float(np.mean(whole)) if whole else float("nan"),
        "kendall_tau": float(np.nanmean(taus)) if taus and not np.all(np.isnan(taus)) else float("nan"),
    }


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two equal-length sequences (ties in either reduce the denominator)."""
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), k=1)
    dx, dy = dx[upper], dy[upper]
    n_x, n_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if n_x == 0 or n_y == 0:
        return float("nan")
    return float((dx * dy).sum() / np.sqrt(n_x * n_y))
