"""Ranked answers of graded quality, built from the shipped SFT pairs (an easy reward-model set).

For each SFT prompt the four answers, best first, are:
  1. its real answer;
  2. the real answer cut after its first half of words (on topic, but stops mid-way);
  3. the real answer to another prompt of the same source (fluent, but off topic);
  4. the real answer's words in a shuffled order (not language).
The order says what a reward model should learn first: language over word salad, the right topic over a
wrong one, a complete answer over a cut one. Answers of fewer than 6 words are skipped (too short to cut).
The train / held-out split of the SFT data is kept, so held-out prompts are never seen in training.
Deterministic: seeded by sha256 of each prompt; the same input gives byte-identical output.

    python data/scripts/build_answer_quality.py data/sft data/reward/answer-quality
"""

import argparse
import hashlib
import json
import random
from pathlib import Path

SOURCES = ("chatterbot", "python-faq", "jargon")
MAX_WORDS = 60  # longer answers are cut to their first 60 words first, so all four answers stay short


def rankings(rows: list[dict]) -> list[dict]:
    """Four graded answers per usable row."""
    usable = [r for r in rows if len(r["completion"].split()) >= 6]
    out = []
    for index, row in enumerate(usable):
        rng = random.Random(hashlib.sha256(row["prompt"].encode()).hexdigest())
        words = row["completion"].split()[:MAX_WORDS]
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        other = usable[(index + 1 + rng.randrange(len(usable) - 1)) % len(usable)]
        while other["completion"] == row["completion"]:
            other = usable[rng.randrange(len(usable))]
        out.append({
            "prompt": row["prompt"],
            "answers": [" ".join(words), " ".join(words[: len(words) // 2]),
                        " ".join(other["completion"].split()[:MAX_WORDS]), " ".join(shuffled)],
            "ranks": [1, 2, 3, 4],
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sft", type=Path, help="data/sft")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "heldout"):
        rows = []
        for source in SOURCES:
            lines = (args.sft / source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            rows += rankings([json.loads(line) for line in lines if line.strip()])
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (args.out / f"{split}.jsonl").write_text(text, encoding="utf-8")
        print(f"{split}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
