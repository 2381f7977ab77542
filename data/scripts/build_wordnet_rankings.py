"""Ranked answers for the reward model from WordNet sense frequencies (human annotation counts).

For a lemma with at least two senses that annotators tagged in SemCor, the prompt asks what the word
usually means; the answers are the sense glosses (examples stripped) and their ranks follow the tag counts
in `cntlist.rev` (more often tagged = better = lower rank; equal counts share a rank). At most 9 answers
per prompt (the InstructGPT range is K = 4..9). Split into train / held-out by lemma (sha256 of the lemma),
so no word appears in both. Deterministic: the same WordNet files give byte-identical output.

    apt-get install -y wordnet-base
    python data/scripts/build_wordnet_rankings.py /usr/share/wordnet data/reward/wordnet
"""

import argparse
import hashlib
import json
from collections import defaultdict
from pathlib import Path

POS = {"n": ("noun", "noun"), "v": ("verb", "verb"), "a": ("adj", "adjective"), "r": ("adv", "adverb")}
SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}  # 5 = adjective satellite
MAX_ANSWERS = 9
HELDOUT_PERCENT = 10


def tag_counts(wordnet: Path) -> dict[tuple[str, str, int], int]:
    """(lemma, pos letter, sense number) -> how often annotators tagged that sense."""
    counts = {}
    for line in (wordnet / "cntlist.rev").read_text(encoding="utf-8").splitlines():
        key, sense_number, count = line.split()
        lemma, rest = key.split("%", 1)
        counts[(lemma, SS_TYPE[rest[0]], int(sense_number))] = int(count)
    return counts


def glosses(wordnet: Path, file_pos: str) -> dict[int, str]:
    """synset offset -> gloss without its example sentences."""
    out = {}
    for line in (wordnet / f"data.{file_pos}").read_text(encoding="latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue  # licence header
        gloss = line.split("|", 1)[1].strip()
        out[int(line.split(" ", 1)[0])] = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
    return out


def rankings(wordnet: Path) -> list[dict]:
    """One ranked list per (lemma, part of speech) with >= 2 distinct tagged senses."""
    counts = tag_counts(wordnet)
    rows = []
    for letter, (file_pos, name) in POS.items():
        gloss_of = glosses(wordnet, file_pos)
        for line in (wordnet / f"index.{file_pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, synset_count = fields[0], int(fields[2])
            offsets = [int(o) for o in fields[-synset_count:]]
            scored, seen = [], set()
            for sense_number, offset in enumerate(offsets, start=1):
                count = counts.get((lemma, letter, sense_number), 0)
                gloss = gloss_of[offset]
                if count > 0 and gloss and gloss not in seen:
                    seen.add(gloss)
                    scored.append((count, gloss))
            scored.sort(key=lambda item: -item[0])  # stable: WordNet's sense order breaks no ties
            scored = scored[:MAX_ANSWERS]
            if len({count for count, _ in scored}) < 2:
                continue
            distinct = sorted({count for count, _ in scored}, reverse=True)
            rows.append({
                "prompt": f"What does the {name} '{lemma.replace('_', ' ')}' usually mean?",
                "answers": [gloss for _, gloss in scored],
                "ranks": [distinct.index(count) + 1 for count, _ in scored],
                "lemma": lemma,
            })
    return rows


def main() -> None:
    """Write train.jsonl and heldout.jsonl."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wordnet_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    splits = defaultdict(list)
    for row in rankings(args.wordnet_dir):
        lemma = row.pop("lemma")
        bucket = int(hashlib.sha256(lemma.encode()).hexdigest(), 16) % 100
        splits["heldout" if bucket < HELDOUT_PERCENT else "train"].append(row)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in sorted(splits.items()):
        with open(args.out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        pairs = sum(sum(1 for i in row["ranks"] for j in row["ranks"] if i < j) for row in rows)
        print(f"{split}: {len(rows)} prompts, {pairs} untied pairs")


if __name__ == "__main__":
    main()
