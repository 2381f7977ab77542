"""Verifiable instruction following (IFEval, Zhou et al. 2023) on the shipped questions: every instruction is
written and checked by IFEval's own code (rows/instructions.py, the pinned if-verifiable package).

From the distinct questions of data/sft (chatterbot, python-faq, jargon), each with 1-3 seeded instructions:
- `sft.jsonl` (train questions): the answer is derived from the reference (its first sentence, at most 30
  words) and made to follow each instruction with probability 1/2 (lowercased, quoted, a title, a P.S., ...),
  so an SFT model follows them sometimes and rankings of its answers have signal;
- `train.jsonl` (train questions, other draws): prompts for sampling and RL; the completion is the derived
  answer following every instruction (a reference for the content guard);
- `heldout.jsonl` (held-out questions): the instruction types of training, for the verdict;
- `heldout-types.jsonl` (held-out questions): only types never used in training (HELDOUT_TYPES), to see
  whether a gain generalises.
Rows are `{"prompt", "completion", "instruction_id_list", "kwargs"}` (IFEval's own field names). Every
instruction of train/heldout rows is followed by its completion, by IFEval's strict check. Deterministic:

    python data/scripts/build_instructions.py data/sft data/instructions      (the project installed)
"""

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

from measures.guard import FUNCTION_WORDS
from rows.instructions import check, conflicts, describe, seeded_description

SEED = 2023
MAX_WORDS = 30
#: instruction types of training (sft, train, heldout), with how an answer is made to follow each
TRAIN_TYPES = ("change_case:english_lowercase", "change_case:english_capital", "punctuation:no_comma",
               "startend:quotation", "startend:end_checker", "detectable_format:title",
               "detectable_content:postscript", "keywords:existence", "length_constraints:number_words")
#: never in training: the heldout-types split
HELDOUT_TYPES = ("detectable_format:number_highlighted_sections", "keywords:forbidden_words",
                 "combination:repeat_prompt", "length_constraints:number_paragraphs")
#: the order answers are changed in: content first, decorations, then case and punctuation over everything
ORDER = ("length_constraints:number_words", "keywords:existence", "keywords:forbidden_words",
         "detectable_format:number_highlighted_sections", "length_constraints:number_paragraphs",
         "detectable_format:title", "detectable_content:postscript", "startend:end_checker", "startend:quotation",
         "combination:repeat_prompt", "change_case:english_lowercase", "change_case:english_capital",
         "punctuation:no_comma")
_TAG = re.compile(r"^(?:\[[^\]]*\]\s*|(?:n|adj|adv|v|vt|vi|interj|pl|prep|conj|abbrev)\.(?:,\s*)?\s*)+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")


def short_answer(reference: str) -> str | None:
    """The reference's first sentence, at most MAX_WORDS words, without a dictionary tag ("n.", "[Usenet]")."""
    text = _TAG.sub("", " ".join(reference.replace("//", " ").split()))
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    words = sentence.split()
    if len(words) < 3:
        return None
    cut = " ".join(words[:MAX_WORDS])
    return cut if cut[-1] in ".!?" else cut.rstrip(",;:") + "."


def content_words(text: str) -> list[str]:
    """Distinct lowercase content words of a text, in order."""
    seen = []
    for word in _WORD.findall(text):
        word = word.lower().strip("'-")
        if word not in FUNCTION_WORDS and word not in seen:
            seen.append(word)
    return seen


def arguments(instruction_id: str, *, question: str, answer: str, rng: random.Random) -> dict | None:
    """The instruction's kwargs for this question and answer (None when it does not fit them); what IFEval
    would draw from its own lists (end phrases, postscript markers) it draws, seeded."""
    words = content_words(answer)
    if instruction_id == "keywords:existence":
        return {"keywords": rng.sample(words[:6], k=min(2, len(words[:6])))} if words else None
    if instruction_id == "keywords:forbidden_words":
        return {"forbidden_words": [rng.choice(words[:6])]} if words else None
    if instruction_id == "length_constraints:number_words":
        # both relations, equally often: "less than" alone would teach that shorter is better
        length = len(answer.split())
        if rng.random() < 0.5:
            return {"num_words": rng.randint(5, length - 1), "relation": "less than"} if length > 6 else None
        return {"num_words": rng.randint(max(2, length // 2), length), "relation": "at least"} if length >= 4 else None
    if instruction_id == "detectable_format:number_highlighted_sections":
        return {"num_highlights": 1}
    if instruction_id == "length_constraints:number_paragraphs":
        return {"num_paragraphs": 2} if len(answer.split()) >= 6 else None
    if instruction_id == "combination:repeat_prompt":
        return {"prompt_to_repeat": question}
    if instruction_id in ("startend:end_checker", "detectable_content:postscript"):
        return seeded_description(instruction_id, {}, rng.randrange(2**31))[1]
    return {}


def title_of(question: str) -> str:
    """A short title from the question: the quoted term, else its first content words."""
    quoted = re.search(r"'([^']+)'", question)
    return quoted.group(1) if quoted else " ".join(w.capitalize() for w in content_words(question)[:3]) or "Answer"


def follow(answer: str, instruction_id: str, kwargs: dict, *, question: str) -> str:
    """`answer` changed to follow one instruction."""
    if instruction_id == "length_constraints:number_words" and kwargs["relation"] == "at least":
        return answer  # drawn no longer than the answer
    if instruction_id == "length_constraints:number_words":
        words = answer.split()[: kwargs["num_words"] - 1]
        while words and len(re.findall(r"\w+", " ".join(words))) >= kwargs["num_words"]:
            words.pop()
        return " ".join(words).rstrip(",;:") + "."
    if instruction_id == "keywords:existence":
        missing = [k for k in kwargs["keywords"] if not re.search(k, answer, flags=re.IGNORECASE)]
        return answer + (" " + " ".join(missing).capitalize() + "." if missing else "")
    if instruction_id == "keywords:forbidden_words":
        for word in kwargs["forbidden_words"]:
            answer = re.sub(r"\b" + re.escape(word) + r"\b", "it", answer, flags=re.IGNORECASE)
        return answer
    if instruction_id == "detectable_format:number_highlighted_sections":
        first, _, rest = answer.partition(" ")
        return f"*{first}* {rest}".strip()
    if instruction_id == "length_constraints:number_paragraphs":
        words = answer.split()
        return " ".join(words[: len(words) // 2]) + "\n\n***\n\n" + " ".join(words[len(words) // 2 :])
    if instruction_id == "detectable_format:title":
        return f"<<{title_of(question)}>>\n\n{answer}"
    if instruction_id == "detectable_content:postscript":
        return f"{answer}\n\n{kwargs['postscript_marker']} I hope this helps."
    if instruction_id == "startend:end_checker":
        return f"{answer} {kwargs['end_phrase']}"
    if instruction_id == "startend:quotation":
        return f'"{answer}"'
    if instruction_id == "combination:repeat_prompt":
        return f"{kwargs['prompt_to_repeat']}\n\n{answer}"
    if instruction_id == "change_case:english_lowercase":
        return answer.lower()
    if instruction_id == "change_case:english_capital":
        return answer.upper()
    if instruction_id == "punctuation:no_comma":
        return answer.replace(",", "")
    raise ValueError(f"no way to follow {instruction_id}")


def draw(question: str, answer: str, types: tuple[str, ...], *, rng: random.Random) -> list[dict]:
    """1-3 instructions of `types` that IFEval allows together and that fit this question and answer."""
    chosen: list[dict] = []
    wanted = rng.choice((1, 1, 2, 2, 3))
    for instruction_id in rng.sample(types, k=len(types)):
        if len(chosen) == wanted:
            break
        if any(instruction_id in conflicts()[c["id"]] for c in chosen):
            continue
        kwargs = arguments(instruction_id, question=question, answer=answer, rng=rng)
        if kwargs is not None:
            chosen.append({"id": instruction_id, "kwargs": kwargs})
    return chosen


def applied(answer: str, instructions: list[dict], *, question: str, followed: set[str]) -> str:
    """`answer` made to follow the instructions in `followed`, in ORDER."""
    for instruction in sorted(instructions, key=lambda i: ORDER.index(i["id"])):
        if instruction["id"] in followed:
            answer = follow(answer, instruction["id"], instruction["kwargs"], question=question)
    return answer


def prompt_of(question: str, instructions: list[dict]) -> str:
    """The question, then each instruction as IFEval words it."""
    return question + " " + " ".join(describe(i["id"], i["kwargs"]) for i in instructions)


def row_of(question: str, instructions: list[dict], completion: str) -> dict:
    """A row in IFEval's shape (plus the completion)."""
    return {"prompt": prompt_of(question, instructions), "completion": completion,
            "instruction_id_list": [i["id"] for i in instructions], "kwargs": [i["kwargs"] for i in instructions]}


def followed_row(question: str, answer: str, types: tuple[str, ...], *, rng: random.Random) -> dict | None:
    """A prompt whose derived answer follows every instruction by IFEval's strict check (up to 20 draws)."""
    for _ in range(20):
        instructions = draw(question, answer, types, rng=rng)
        if not instructions:
            continue
        completion = applied(answer, instructions, question=question, followed={i["id"] for i in instructions})
        prompt = prompt_of(question, instructions)
        if all(c.strict for c in check(completion, instructions, prompt)):
            return row_of(question, instructions, completion)
    return None


def sft_row(question: str, answer: str, rng: random.Random) -> dict | None:
    """A prompt whose derived answer follows each instruction with probability 1/2."""
    instructions = draw(question, answer, TRAIN_TYPES, rng=rng)
    if not instructions:
        return None
    followed = {i["id"] for i in instructions if rng.random() < 0.5}
    return row_of(question, instructions, applied(answer, instructions, question=question, followed=followed))


def questions(sft_dir: Path, split: str) -> list[tuple[str, str]]:
    """(question, short answer) of each distinct question of data/sft's `split` files, sources in name order."""
    found, seen = [], set()
    for path in sorted(sft_dir.glob(f"*/{split}.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            answer = short_answer(row["completion"])
            if row["prompt"] not in seen and answer:
                seen.add(row["prompt"])
                found.append((row["prompt"], answer))
    return found


def rng_for(question: str, purpose: str) -> random.Random:
    """A generator seeded by the question and what the draw is for (rows do not shift when others change)."""
    return random.Random(int(hashlib.sha256(f"{SEED}:{purpose}:{question}".encode()).hexdigest()[:16], 16))


def write(path: Path, rows: list[dict]) -> None:
    """One JSON row per line."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"{path}: {len(rows)} rows")


def main() -> None:
    """Build the four files from data/sft."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sft_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    train, heldout = questions(args.sft_dir, "train"), questions(args.sft_dir, "heldout")
    splits = {
        "sft.jsonl": [sft_row(q, a, rng_for(q, "sft")) for q, a in train],
        "train.jsonl": [followed_row(q, a, TRAIN_TYPES, rng=rng_for(q, "train")) for q, a in train],
        "heldout.jsonl": [followed_row(q, a, TRAIN_TYPES, rng=rng_for(q, "heldout")) for q, a in heldout],
        "heldout-types.jsonl": [followed_row(q, a, HELDOUT_TYPES, rng=rng_for(q, "heldout-types")) for q, a in heldout],
    }
    for name, rows in splits.items():
        write(args.out_dir / name, [row for row in rows if row is not None])


if __name__ == "__main__":
    main()
