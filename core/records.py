"""Read SFT and ranking JSONL files into normalised rows, refusing bad rows with file and line named.

Torch-free: the orchestrator calls the `*_problems` functions to check data before launching anything,
and the stages call the readers again in their own process. Prompts may be plain text (one user turn) or
chat messages `[{"role", "content"}, ...]`; every row comes out in chat form.

SFT rows -> `{"prompt": [messages], "completion": [one assistant message]}`:
  `{"prompt": ..., "completion": ...}`, or `{"messages": [...]}` whose last turn (the assistant's) is the answer.
Ranking rows -> `{"prompt": [messages], "answers": [str], "ranks": [int]}` (lower rank is better):
  `{"prompt", "answers": [best, ..., worst]}`, `{"prompt", "answers", "ranks"}` (ties allowed, never paired),
  or `{"prompt", "chosen", "rejected"}` (the K = 2 case).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from core.errors import InputError
from core.textfiles import BadRow, jsonl_objects, read_utf8

ROLES = ("system", "user", "assistant")
SHOWN_PER_FILE = 10  # bad rows listed per file; the rest are counted


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | BadRow]]:
    """(line number, parsed object or the reason it is unusable) for each non-blank line."""
    text = read_utf8(path, "UTF-8 JSON lines")
    if path.suffix != ".jsonl":
        raise InputError(f"{path}: unsupported format {path.suffix!r}; expected .jsonl (one JSON object per line)")
    return jsonl_objects(text)


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(f"{what} is empty")
    return value


def _messages(value, what: str) -> list[dict]:
    """A prompt as chat messages: text becomes one user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, what)}]
    if not isinstance(value, list) or not value:
        raise BadRow(f"{what} must be a string or a non-empty list of messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or set(message) - {"role", "content"} or "role" not in message:
            raise BadRow(f"{what}[{i}] must be an object with role and content")
        if message["role"] not in ROLES:
            raise BadRow(f"{what}[{i}].role is {message['role']!r}; expected one of {', '.join(ROLES)}")
        out.append({"role": message["role"], "content": _text(message.get("content"), f"{what}[{i}].content")})
    return out


def sft_row(row: dict) -> dict:
    """One SFT example in chat form; BadRow if unusable."""
    if "messages" in row:
        if "prompt" in row or "completion" in row:
            raise BadRow('give either "messages" or "prompt" and "completion", not both')
        messages = _messages(row["messages"], "messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise BadRow("messages must hold at least one turn before a final assistant turn (the answer)")
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    if "prompt" not in row or "completion" not in row:
        raise BadRow('expected "prompt" and "completion", or "messages"')
    prompt = _messages(row["prompt"], "prompt")
    completion = row["completion"]
    if isinstance(completion, list):
        if len(completion) != 1 or not isinstance(completion[0], dict) or completion[0].get("role") != "assistant":
            raise BadRow("completion must be a string or a list with one assistant message")
        completion = completion[0].get("content")
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": _text(completion, "completion")}]}


def ranking_row(row: dict) -> dict:
    """One prompt with ranked answers; BadRow if unusable."""
    if "prompt" not in row:
        raise BadRow('missing "prompt"')
    prompt = _messages(row["prompt"], "prompt")
    if "chosen" in row or "rejected" in row:
        if "answers" in row or "ranks" in row:
            raise BadRow('give either "answers" or "chosen" and "rejected", not both')
        if "chosen" not in row or "rejected" not in row:
            raise BadRow('a pairwise row needs both "chosen" and "rejected"')
        answers, ranks = [_text(row["chosen"], "chosen"), _text(row["rejected"], "rejected")], [1, 2]
    elif "answers" in row:
        answers = row["answers"]
        if not isinstance(answers, list) or len(answers) < 2:
            raise BadRow("answers must be a list of at least 2 answers")
        answers = [_text(a, f"answers[{i}]") for i, a in enumerate(answers)]
        ranks = row.get("ranks", list(range(1, len(answers) + 1)))
        if not isinstance(ranks, list) or len(ranks) != len(answers):
            got = len(ranks) if isinstance(ranks, list) else type(ranks).__name__
            raise BadRow(f"ranks has {got} entries for {len(answers)} answers; expected one rank per answer")
        if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
            raise BadRow(f"ranks must be integers (lower is better), got {ranks}")
        if len(set(ranks)) == 1:
            raise BadRow("all answers are tied; expected at least two different ranks")
    else:
        raise BadRow('expected "answers" (best first, or with "ranks"), or "chosen" and "rejected"')
    return {"prompt": prompt, "answers": answers, "ranks": ranks}


def prompt_row(row: dict) -> dict:
    """A prompt for PPO from any SFT or ranking row; `best_answer` when the row ranks answers (for the gold
    win rate), else None."""
    if "messages" in row and "prompt" not in row:
        return {"prompt": sft_row(row)["prompt"], "best_answer": None}
    if "answers" in row or "chosen" in row:
        ranked = ranking_row(row)
        best = min(ranked["ranks"])
        return {"prompt": ranked["prompt"], "best_answer": ranked["answers"][ranked["ranks"].index(best)]}
    if "prompt" not in row:
        raise BadRow('expected "prompt" or "messages"')
    return {"prompt": _messages(row["prompt"], "prompt"), "best_answer": None}


def read_rows(path: str | Path, parse: Callable[[dict], dict], skip_bad_rows: bool = False) -> tuple[list[dict], list[str]]:
    """(usable rows, one message per bad row) of one file. Without `skip_bad_rows`, bad rows raise InputError."""
    path = Path(path)
    rows, bad = [], []
    for number, row in _jsonl_rows(path):
        try:
            if isinstance(row, BadRow):
                raise row
            rows.append(parse(row))
        except BadRow as e:
            bad.append(f"{path}:{number}: {e}")
    if bad and not skip_bad_rows:
        shown = bad[:SHOWN_PER_FILE]
        if len(bad) > len(shown):
            shown.append(f"{path}: {len(bad) - len(shown)} more bad rows (fix them, or set data.skip_bad_rows)")
        raise InputError(shown)
    if not rows:
        raise InputError(f"{path}: no usable rows; expected at least one JSON object per line")
    return rows, bad


def _problems(paths: list[str], parse: Callable[[dict], dict], skip_bad_rows: bool) -> list[str]:
    problems = []
    for path in paths:
        try:
            read_rows(path, parse, skip_bad_rows)
        except InputError as e:
            problems += e.problems
    return problems


def sft_problems(paths: list[str]) -> list[str]:
    """Every unusable SFT file or row among `paths` (empty when all are fine)."""
    return _problems(paths, sft_row, skip_bad_rows=False)


def prompt_problems(paths: list[str]) -> list[str]:
    """Every unusable prompt file or row among `paths`."""
    return _problems(paths, prompt_row, skip_bad_rows=False)


def ranking_problems(paths: list[str], skip_bad_rows: bool = False) -> list[str]:
    """Every unusable ranking file or row among `paths` (bad rows pass when they may be skipped)."""
    return _problems(paths, ranking_row, skip_bad_rows)


def prompt_and_reference(row: dict) -> dict:
    """A prompt and its reference answer (or None): an SFT row's completion or last message, or a ranking
    row's best answer."""
    parsed = prompt_row(row)
    reference = parsed["best_answer"]
    if reference is None and "completion" in row:
        completion = row["completion"]
        reference = completion if isinstance(completion, str) else completion[0]["content"]
    elif reference is None and "messages" in row:
        reference = row["messages"][-1]["content"]
    return {"prompt": parsed["prompt"], "reference": reference}


def distinct_prompts(paths: list, max_prompts: int | None = None) -> list[dict]:
    """The distinct prompts of the files in file order (at most `max_prompts`), each with its reference
    answer (`prompt_and_reference`)."""
    prompts, seen = [], set()
    for path in paths:
        rows, _ = read_rows(path, prompt_and_reference)
        for row in rows:
            key = repr(row["prompt"])
            if key not in seen:
                seen.add(key)
                prompts.append(row)
    return prompts[:max_prompts]


def prompt_row_with_reference(row: dict) -> dict:
    """`prompt_row` and the row's reference answer (`prompt_and_reference`), for judges that compare with it."""
    return {**prompt_row(row), "reference": prompt_and_reference(row)["reference"]}
