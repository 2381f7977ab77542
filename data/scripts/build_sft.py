"""Instruction/answer pairs for SFT from three real, permissively licensed sources.

- chatterbot: chatterbot-corpus 1.3.3 (BSD), English conversations; each utterance -> the next one.
- python-faq: the Python 3.11 FAQ (PSF licence); a heading ending in '?' -> the text up to the next heading.
- jargon: the Jargon File 4.4.7 (public domain); "In hacker slang, what does 'X' mean?" -> the entry.

Rows are `{"prompt", "completion"}`; answers of 40..3000 characters for the two document sources. Each
source is split 95/5 into train.jsonl / heldout.jsonl by sha256 of the prompt. Deterministic.

    pip download --no-deps chatterbot-corpus==1.3.3 && unzip chatterbot_corpus-1.3.3-*.whl -d chatterbot
    apt-get install -y jargon-text python3.11-doc
    python data/scripts/build_sft.py chatterbot/chatterbot_corpus/data/english \\
        /usr/share/doc/jargon-text/jargon.txt.gz /usr/share/doc/python3.11/html/_sources/faq data/sft
"""

import argparse
import gzip
import hashlib
import json
import re
from pathlib import Path

import yaml

HELDOUT_PERCENT = 5
MIN_CHARS, MAX_CHARS = 40, 3000


def chatterbot_pairs(english_dir: Path) -> list[dict]:
    """Consecutive utterances of every English conversation."""
    pairs = []
    for path in sorted(english_dir.glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            turns = [str(t).strip() for t in conversation if str(t).strip()]
            pairs += [{"prompt": a, "completion": b} for a, b in zip(turns, turns[1:])]
    return pairs


_ROLE = re.compile(r":[a-z:]+:`(?:[^`<]*<)?([^`>]+)>?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")
_LITERAL = re.compile(r"``([^`]+)``")


def _plain_rst(text: str) -> str:
    text = _LINK.sub(r"\1", text)
    text = _ROLE.sub(lambda m: m.group(1).lstrip("~!"), text)
    text = _LITERAL.sub(r"\1", text)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(".. ")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def python_faq_pairs(faq_dir: Path) -> list[dict]:
    """Questions (rst headings ending in '?') and the text under them."""
    pairs = []
    for path in sorted(faq_dir.glob("*.rst.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        headings = [i for i in range(len(lines) - 1)
                    if lines[i].strip() and re.fullmatch(r"([-=~^*])\1{2,}", lines[i + 1].strip())
                    and len(lines[i + 1].strip()) >= len(lines[i].strip())]
        for n, i in enumerate(headings):
            question = lines[i].strip()
            if not question.endswith("?"):
                continue
            end = headings[n + 1] if n + 1 < len(headings) else len(lines)
            answer = _plain_rst("\n".join(lines[i + 2 : end]))
            if MIN_CHARS <= len(answer) <= MAX_CHARS:
                pairs.append({"prompt": question, "completion": answer})
    return pairs


_ENTRY = re.compile(r"^   :([^:]+):\s*(.*)$")


def jargon_pairs(jargon_gz: Path) -> list[dict]:
    """Each lexicon entry: its headword and its body, cross-reference braces removed."""
    lines = gzip.decompress(jargon_gz.read_bytes()).decode("utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if _ENTRY.match(line)]
    pairs = []
    for n, i in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        body_lines = [_ENTRY.match(lines[i]).group(2)] + lines[i + 1 : end]
        # the letter index before the next section is a run of single short lines; cut at the first one
        paragraphs = [" ".join(p.split()) for p in "\n".join(body_lines).split("\n\n")]
        kept = []
        for paragraph in paragraphs:
            if kept and len(paragraph) < 40 and not paragraph.endswith((".", ":", ")")):
                break
            if paragraph:
                kept.append(paragraph)
        answer = re.sub(r"[{}]", "", "\n\n".join(kept)).strip()
        term = _ENTRY.match(lines[i]).group(1).strip()
        if MIN_CHARS <= len(answer) <= MAX_CHARS:
            pairs.append({"prompt": f"In hacker slang, what does '{term}' mean?", "completion": answer})
    return pairs


def write_split(pairs: list[dict], out_dir: Path) -> None:
    """Deduplicate by prompt+completion, split by prompt hash, write JSONL."""
    seen, splits = set(), {"train": [], "heldout": []}
    for row in pairs:
        key = (row["prompt"], row["completion"])
        if key in seen:
            continue
        seen.add(key)
        bucket = int(hashlib.sha256(row["prompt"].encode()).hexdigest(), 16) % 100
        splits["heldout" if bucket < HELDOUT_PERCENT else "train"].append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{out_dir.name}: {len(splits['train'])} train, {len(splits['heldout'])} held out")


def main() -> None:
    """Build data/sft/<source>/{train,heldout}.jsonl for the three sources."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chatterbot_english_dir", type=Path)
    parser.add_argument("jargon_txt_gz", type=Path)
    parser.add_argument("python_faq_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    write_split(chatterbot_pairs(args.chatterbot_english_dir), args.out_dir / "chatterbot")
    write_split(python_faq_pairs(args.python_faq_dir), args.out_dir / "python-faq")
    write_split(jargon_pairs(args.jargon_txt_gz), args.out_dir / "jargon")


if __name__ == "__main__":
    main()
