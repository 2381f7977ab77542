"""Row shapes: SFT, preference and prompt rows in every shape TRL reads, normalised, and bad rows refused with
their source and line (or row index) named.

Torch-free: the orchestrator calls the `*_problems` functions to check data before launching anything (they
stream the rows and keep none), and the stages read the rows again in their own process. Every row comes out
in chat form; prompts given as text become one user turn.

SFT rows -> `{"text"}`, or `{"prompt": [messages], "completion": [messages ending with the assistant's],
"tools"?: JSON}`:
  `{"text"}` (language modelling); `{"prompt", "completion"}` (strings or messages); `{"messages": [...]}`
  whose last turn (the assistant's) is the answer; `tool` turns, `tool_calls` and other message keys pass
  through to the chat template, as does a row's `tools` list.
Preference rows -> `{"prompt": [messages], "answers": [str], "ranks": [int]}` (lower rank is better):
  `{"prompt", "answers": [best, ..., worst]}`, `{"prompt", "answers", "ranks"}` (ties allowed, never paired),
  `{"prompt", "chosen", "rejected"}` (explicit prompt, answers as strings or messages), or `{"chosen",
  "rejected"}` alone (implicit prompt, as hh-rlhf: their shared beginning is the prompt).
Named shapes of other tools, read as the shapes above: ShareGPT `{"conversations": [{"from", "value"}]}`
(`human`/`gpt`/`system`, as LLaMA-Factory and axolotl read it) as `messages`; Alpaca `{"instruction", "input"?,
"output"?}` as `prompt` (the instruction, then a blank line and the input when there is one) and `completion`.
Unpaired rows `{"prompt", "completion", "label"}` (KTO's shape) -> `{"prompt", "completions", "labels"}` for the kto
kind (which also splits rankings at their median rank); refused by name where answers are compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from core.errors import InputError
from rows.datasources import DataSource, source_of, source_rows
from rows.instructions import instructions_of
from rows.messages import answer, implicit_prompt, messages, text_value, tools_json
from rows.textfiles import BadRow

SHOWN_PER_FILE = 10  # bad rows listed per source; the rest are counted
UNPAIRED = ("an unpaired preference row (prompt, completion, label: KTO's shape); this stage compares answers: "
            'give "chosen" and "rejected", or "answers" (with "ranks")')
PREFERENCE_IN_SFT = ('a preference row (chosen/rejected or answers); SFT expects "text", "prompt" and "completion", '
                     'or "messages"')


#: ShareGPT's speakers as chat roles
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "system": "system"}


def named_shape(row: dict) -> dict:
    """A ShareGPT or Alpaca row as the `messages` or `prompt`/`completion` row it means (see the module
    docstring); any other row as it is. BadRow when a named shape is malformed."""
    if "conversations" in row and "messages" not in row:
        turns = row["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) and t.get("from") in SHAREGPT_ROLES
                                                  and isinstance(t.get("value"), str) for t in turns):
            raise BadRow(f"conversations must be a list of {{from, value}} turns with from one of "
                         f"{', '.join(SHAREGPT_ROLES)} (ShareGPT)")
        rest = {k: v for k, v in row.items() if k != "conversations"}
        return {**rest, "messages": [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]}
    if "instruction" in row and "prompt" not in row and "messages" not in row:
        instruction, given = row["instruction"], row.get("input") or ""
        if not isinstance(instruction, str) or not isinstance(given, str):
            raise BadRow("instruction and input must be strings (Alpaca)")
        rest = {k: v for k, v in row.items() if k not in ("instruction", "input", "output")}
        prompt = instruction + (f"\n\n{given}" if given.strip() else "")
        return {**rest, "prompt": prompt, **({"completion": row["output"]} if "output" in row else {})}
    return row


def _is_unpaired(row: dict) -> bool:
    return "label" in row and "completion" in row and "chosen" not in row


def sft_row(row: dict) -> dict:
    """One SFT example: `{"text"}`, or a chat prompt and its completion; BadRow if unusable."""
    row = named_shape(row)
    if _is_unpaired(row):
        raise BadRow("an unpaired preference row (prompt, completion, label: KTO's shape); SFT expects \"text\", "
                     '"prompt" and "completion", or "messages"')
    if "chosen" in row or "rejected" in row or "answers" in row:
        raise BadRow(PREFERENCE_IN_SFT)
    extras = {"tools": tools_json(row["tools"])} if row.get("tools") is not None else {}
    if "messages" in row:
        if "prompt" in row or "completion" in row:
            raise BadRow('give either "messages" or "prompt" and "completion", not both')
        turns = messages(row["messages"], "messages")
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise BadRow("messages must hold at least one turn before a final assistant turn (the answer)")
        return {"prompt": turns[:-1], "completion": turns[-1:], **extras}
    if "text" in row and "prompt" not in row and "completion" not in row:
        return {"text": text_value(row["text"], "text")}
    if "prompt" not in row or "completion" not in row:
        raise BadRow('expected "prompt" and "completion", "messages", or "text"')
    prompt = messages(row["prompt"], "prompt")
    completion = row["completion"]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": text_value(completion, "completion")}]
    else:
        if not isinstance(completion, list) or not completion:
            raise BadRow("completion must be a string or a non-empty list of messages")
        completion = messages(completion, "completion")
        if completion[-1]["role"] != "assistant":
            raise BadRow("completion must end with an assistant message")
    return {"prompt": prompt, "completion": completion, **extras}


def ranking_row(row: dict) -> dict:
    """One prompt with ranked answers, from any preference shape; BadRow if unusable."""
    if _is_unpaired(row):
        raise BadRow(UNPAIRED)
    if "chosen" in row or "rejected" in row:
        if "answers" in row or "ranks" in row:
            raise BadRow('give either "answers" or "chosen" and "rejected", not both')
        if "chosen" not in row or "rejected" not in row:
            raise BadRow('a pairwise row needs both "chosen" and "rejected"')
        if "prompt" not in row:
            prompt, chosen, rejected = implicit_prompt(row["chosen"], row["rejected"])
        else:
            prompt = messages(row["prompt"], "prompt")
            chosen, rejected = answer(row["chosen"], prompt, "chosen"), answer(row["rejected"], prompt, "rejected")
        return {"prompt": prompt, "answers": [chosen, rejected], "ranks": [1, 2]}
    if "prompt" not in row:
        raise BadRow('missing "prompt"')
    prompt = messages(row["prompt"], "prompt")
    if "answers" not in row:
        raise BadRow('expected "answers" (best first, or with "ranks"), or "chosen" and "rejected"')
    answers = row["answers"]
    if not isinstance(answers, list) or len(answers) < 2:
        raise BadRow("answers must be a list of at least 2 answers")
    answers = [answer(a, prompt, f"answers[{i}]") for i, a in enumerate(answers)]
    ranks = row.get("ranks", list(range(1, len(answers) + 1)))
    if not isinstance(ranks, list) or len(ranks) != len(answers):
        got = len(ranks) if isinstance(ranks, list) else type(ranks).__name__
        raise BadRow(f"ranks has {got} entries for {len(answers)} answers; expected one rank per answer")
    if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise BadRow(f"ranks must be integers (lower is better), got {ranks}")
    if len(set(ranks)) == 1:
        raise BadRow("all answers are tied; expected at least two different ranks")
    return {"prompt": prompt, "answers": answers, "ranks": ranks}


def unpaired_row(row: dict) -> dict:
    """Answers labelled desirable or not, for KTO: `{prompt, completions: [str], labels: [bool]}`. An unpaired
    row `{prompt, completion, label}` gives one; a ranking gives its answers ranked above the median rank
    (desirable) and below it (undesirable), those at the median left out. BadRow if unusable."""
    if _is_unpaired(row):
        prompt = messages(row["prompt"], "prompt") if "prompt" in row else None
        if prompt is None:
            raise BadRow('an unpaired row needs "prompt", "completion" and "label"')
        label = row["label"]
        if not isinstance(label, bool):
            raise BadRow(f"label must be true (desirable) or false (undesirable), got {label!r}")
        return {"prompt": prompt, "completions": [answer(row["completion"], prompt, "completion")], "labels": [label]}
    ranked = ranking_row(row)
    ranks = sorted(ranked["ranks"])
    median = (ranks[(len(ranks) - 1) // 2] + ranks[len(ranks) // 2]) / 2
    kept = [(a, r < median) for a, r in zip(ranked["answers"], ranked["ranks"]) if r != median]
    return {"prompt": ranked["prompt"], "completions": [a for a, _ in kept], "labels": [d for _, d in kept]}


def unpaired_problems(sources: Iterable, skip_bad_rows: bool = False) -> list[str]:
    """Every unusable unpaired or preference source or row among `sources`."""
    return _problems(sources, unpaired_row, skip_bad_rows)


def _is_preference(row: dict) -> bool:
    return "answers" in row or "chosen" in row or "rejected" in row


def prompt_and_reference(row: dict) -> dict:
    """A prompt from any SFT or preference row, and its reference answer: an SFT completion's last turn, the
    best of ranked answers, or None for a bare `{"prompt"}`; with `instructions` when the row carries
    verifiable ones (IFEval's `instruction_id_list` and `kwargs`: rows/instructions.py)."""
    row = named_shape(row)
    instructions = instructions_of(row)
    extras = {"instructions": instructions} if instructions else {}
    if _is_preference(row):
        ranked = ranking_row(row)
        best = ranked["answers"][ranked["ranks"].index(min(ranked["ranks"]))]
        return {"prompt": ranked["prompt"], "reference": best, **extras}
    if "messages" in row or "completion" in row:
        parsed = sft_row(row)
        return {"prompt": parsed["prompt"], "reference": parsed["completion"][-1]["content"], **extras}
    if "prompt" not in row:
        raise BadRow('expected "prompt" or "messages"' + (" (a text row has no prompt)" if "text" in row else ""))
    return {"prompt": messages(row["prompt"], "prompt"), "reference": None, **extras}


def prompt_row(row: dict) -> dict:
    """A prompt for PPO from any SFT or preference row; `best_answer` when the row ranks answers (for the gold
    win rate), else None; its `instructions` when it has them."""
    parsed = prompt_and_reference(row)
    extras = {"instructions": parsed["instructions"]} if "instructions" in parsed else {}
    return {"prompt": parsed["prompt"], "best_answer": parsed["reference"] if _is_preference(row) else None, **extras}


def prompt_row_with_reference(row: dict) -> dict:
    """`prompt_row` and the row's reference answer (`prompt_and_reference`), for judges that compare with it."""
    parsed = prompt_and_reference(row)
    return {**prompt_row(row), "reference": parsed["reference"]}


def _parsed_rows(source, parse: Callable[[dict], dict]):
    """(where, parsed row or BadRow) of one source, streamed."""
    for where, row in source_rows(source):
        if isinstance(row, BadRow):
            yield where, row
            continue
        try:
            yield where, parse(row)
        except BadRow as e:
            yield where, e


def _refuse(label: str, bad: list[str], count: int) -> InputError:
    shown = bad[:SHOWN_PER_FILE]
    if count > len(shown):
        shown.append(f"{label}: {count - len(shown)} more bad rows (fix them, or set data.skip_bad_rows)")
    return InputError(shown)


def read_rows(source: DataSource | str | Path, parse: Callable[[dict], dict],
              skip_bad_rows: bool = False) -> tuple[list[dict], list[str]]:
    """(usable rows, one message per bad row) of one source. Without `skip_bad_rows`, bad rows raise InputError."""
    source = source_of(source)
    rows, bad = [], []
    for where, row in _parsed_rows(source, parse):
        if isinstance(row, BadRow):
            bad.append(f"{where}: {row}")
        else:
            rows.append(row)
    if bad and not skip_bad_rows:
        raise _refuse(source.label(), bad, len(bad))
    if not rows:
        raise InputError(f"{source.label()}: no usable rows; expected at least one row")
    return rows, bad


def check_rows(source: DataSource | str | Path, parse: Callable[[dict], dict], skip_bad_rows: bool = False) -> list[str]:
    """The problems of one source, streamed: no row is kept, so a million rows cost one row's memory."""
    source = source_of(source)
    bad, count, usable = [], 0, 0
    try:
        for where, row in _parsed_rows(source, parse):
            if isinstance(row, BadRow):
                count += 1
                if len(bad) < SHOWN_PER_FILE:
                    bad.append(f"{where}: {row}")
            else:
                usable += 1
    except InputError as e:
        return e.problems
    if count and not skip_bad_rows:
        return _refuse(source.label(), bad, count).problems
    return [] if usable else [f"{source.label()}: no usable rows; expected at least one row"]


def _problems(sources: Iterable, parse: Callable[[dict], dict], skip_bad_rows: bool) -> list[str]:
    return [p for source in sources for p in check_rows(source, parse, skip_bad_rows)]


def sft_problems(sources: Iterable, loss_on: str = "completion") -> list[str]:
    """Every unusable SFT source or row among `sources` (empty when all are fine), and a stage whose rows mix
    plain text with chat (one TRL dataset holds one shape), or that trains assistant turns of plain text."""
    problems, shapes = [], {}  # shapes: "text" or "chat" -> the first source with such rows
    for source in map(source_of, sources):
        def parse(row: dict, label: str = source.label()) -> dict:
            parsed = sft_row(row)
            shapes.setdefault("text" if "text" in parsed else "chat", label)
            return parsed

        problems += check_rows(source, parse)
    if len(shapes) == 2:
        problems.append(f"{shapes['text']}: text rows, and {shapes['chat']}: chat rows, in one stage; expected one "
                        "shape per SFT stage (train text and chat in two stages)")
    elif "text" in shapes and loss_on == "assistant":
        problems.append(f"{shapes['text']}: text rows have no assistant turns; loss_on: assistant expects chat rows")
    return problems


def prompt_problems(sources: Iterable) -> list[str]:
    """Every unusable prompt source or row among `sources`."""
    return _problems(sources, prompt_row, skip_bad_rows=False)


def ranking_problems(sources: Iterable, skip_bad_rows: bool = False) -> list[str]:
    """Every unusable preference source or row among `sources` (bad rows pass when they may be skipped)."""
    return _problems(sources, ranking_row, skip_bad_rows)


def distinct_prompts(sources: list, max_prompts: int | None = None) -> list[dict]:
    """The distinct prompts of the sources in order (at most `max_prompts`), each with its reference
    answer (`prompt_and_reference`)."""
    prompts, seen = [], set()
    for source in sources:
        rows, _ = read_rows(source, prompt_and_reference)
        for row in rows:
            key = repr(row["prompt"])
            if key not in seen:
                seen.add(key)
                prompts.append(row)
    return prompts[:max_prompts]
