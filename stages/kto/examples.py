"""KTO's training examples: one `{prompt, completion, label}` per labelled answer, in a seeded random order.

TRL's KTOTrainer reads its dataset in order (a sequential sampler) and estimates its KL reference point from
"mismatched" pairs made by rotating the completions by one inside each batch; it expects the caller to
shuffle. Unshuffled, later sources (a rank stage's rankings come last) may never be reached, and a prompt's
answers sit side by side, so the mismatched pairs are mostly a prompt with its own answers."""

from __future__ import annotations

import random


def labelled(rows: list[dict], *, seed: int) -> list[dict]:
    """One conversational KTO row `{prompt, completion, label}` per labelled answer, shuffled by `seed`."""
    examples = [{"prompt": row["prompt"], "completion": [{"role": "assistant", "content": answer}], "label": label}
                for row in rows for answer, label in zip(row["completions"], row["labels"])]
    random.Random(seed).shuffle(examples)
    return examples


def kl_pairs(examples: list[dict], batch_size: int) -> list[tuple[dict, dict]]:
    """(prompt's row, the row whose completion it is paired with) for TRL's KL estimate: completions rotated by
    one inside each batch of `batch_size` examples (trl KTOTrainer's `add_kl_completion_ids`)."""
    pairs = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        pairs += list(zip(batch, batch[-1:] + batch[:-1]))
    return pairs
