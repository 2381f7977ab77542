"""Chat messages as rows give them: checked, with their extra keys kept, and prompts found in transcripts.

Torch-free. A message is `{"role", "content", ...}`; keys beyond role and content (`tool_calls`, `name`,
`tool_call_id`, `reasoning_content`, ...) pass through to the chat template. Tabular formats (Parquet,
Arrow) give a missing key as None; those Nones are dropped, as TRL's `remove_none_values` does.
"""

from __future__ import annotations

import json
import re

from rows.textfiles import BadRow

ROLES = ("system", "user", "assistant", "tool")
#: an Anthropic-style transcript (hh-rlhf): "\n\nHuman: …\n\nAssistant: …"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_TRANSCRIPT_ROLES = {"Human": "user", "Assistant": "assistant"}


def text_value(value, what: str) -> str:
    """A non-empty string; BadRow naming `what` otherwise."""
    if not isinstance(value, str):
        raise BadRow(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(f"{what} is empty")
    return value


def without_nones(value):
    """`value` with every None entry of its mappings dropped, recursively."""
    if isinstance(value, dict):
        return {k: without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nones(v) for v in value]
    return value


def message(value, what: str) -> dict:
    """One chat message: a known role, string content (empty only beside tool calls), extra keys kept."""
    if not isinstance(value, dict) or "role" not in value:
        raise BadRow(f"{what} must be an object with role and content")
    value = without_nones(value)
    if value["role"] not in ROLES:
        raise BadRow(f"{what}.role is {value['role']!r}; expected one of {', '.join(ROLES)}")
    calls = value.get("tool_calls")
    if calls is not None and (value["role"] != "assistant" or not isinstance(calls, list)):
        raise BadRow(f"{what}.tool_calls must be a list, on an assistant message")
    if calls and not (value.get("content") or "").strip():
        return {**value, "content": value.get("content") or ""}
    return {**value, "content": text_value(value.get("content"), f"{what}.content")}


def messages(value, what: str) -> list[dict]:
    """A prompt or conversation as chat messages: text becomes one user turn (an hh-rlhf transcript, its turns)."""
    if isinstance(value, str):
        turns = transcript(value)
        return turns if turns is not None else [{"role": "user", "content": text_value(value, what)}]
    if not isinstance(value, list) or not value:
        raise BadRow(f"{what} must be a string or a non-empty list of messages")
    return [message(m, f"{what}[{i}]") for i, m in enumerate(value)]


def transcript(text: str) -> list[dict] | None:
    """The turns of a "\\n\\nHuman: …\\n\\nAssistant: …" transcript (the last may be an empty assistant turn,
    where a prompt ends), or None when `text` is not one."""
    if not text.startswith(("\n\nHuman:", "Human:")):
        return None
    marks = list(_TURN.finditer(text))
    turns = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        turns.append({"role": _TRANSCRIPT_ROLES[mark.group(1)], "content": text[mark.end():end].strip()})
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()  # "…\n\nAssistant:" ends a prompt: the answer comes after it
    return turns


def answer(value, prompt: list[dict], what: str) -> str:
    """An answer's text: a string, or messages that are one assistant turn (after the prompt's turns, when
    the row repeats them, as UltraFeedback's chosen and rejected do)."""
    if isinstance(value, str):
        return text_value(value, what)
    turns = messages(value, what)
    if len(turns) > len(prompt) and strip_keys(turns[: len(prompt)]) == strip_keys(prompt):
        turns = turns[len(prompt):]
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise BadRow(f"{what} must be a string or one assistant message (after the prompt's turns)")
    return turns[0]["content"]


def strip_keys(turns: list[dict]) -> list[tuple[str, str]]:
    """(role, stripped content) of each turn: how two renderings of one prompt are compared."""
    return [(t["role"], t["content"].strip()) for t in turns]


def implicit_prompt(chosen, rejected) -> tuple[list[dict], str, str]:
    """(prompt, chosen answer, rejected answer) of a pair whose prompt is their shared beginning (hh-rlhf):
    whole turns for conversations and transcripts, else the shared text up to a word boundary."""
    if isinstance(chosen, str) and isinstance(rejected, str) and (transcript(chosen) is None or transcript(rejected) is None):
        return _shared_text(chosen, rejected)
    chosen_turns, rejected_turns = messages(chosen, "chosen"), messages(rejected, "rejected")
    shared = 0
    while shared < min(len(chosen_turns), len(rejected_turns)) - 1 \
            and strip_keys(chosen_turns[shared:shared + 1]) == strip_keys(rejected_turns[shared:shared + 1]):
        shared += 1
    prompt = chosen_turns[:shared]
    if not prompt:
        raise BadRow("chosen and rejected share no turns; give the prompt in \"prompt\"")
    for name, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
        if len(turns) != shared + 1 or turns[-1]["role"] != "assistant":
            raise BadRow(f"chosen and rejected must share every turn but a final assistant turn ({name} has "
                         f"{len(turns) - shared} turns after the {shared} shared ones)")
    return prompt, chosen_turns[-1]["content"], rejected_turns[-1]["content"]


def _shared_text(chosen: str, rejected: str) -> tuple[list[dict], str, str]:
    end = 0
    while end < min(len(chosen), len(rejected)) and chosen[end] == rejected[end]:
        end += 1
    while end > 0 and not chosen[end - 1].isspace():  # never split a word between prompt and answer
        end -= 1
    prompt = chosen[:end].strip()
    if not prompt:
        raise BadRow("chosen and rejected share no beginning; give the prompt in \"prompt\"")
    return ([{"role": "user", "content": prompt}], text_value(chosen[end:].strip(), "chosen (after the prompt)"),
            text_value(rejected[end:].strip(), "rejected (after the prompt)"))


def tools_json(value, what: str = "tools") -> str:
    """A row's tool schemas as a JSON string (one Arrow type for every row; TRL parses it back)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRow(f"{what} is a string but not JSON; expected a list of tool schemas") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BadRow(f"{what} must be a list of tool schemas (objects)")
    return json.dumps(without_nones(value))


def prompt_text(prompt: list[dict]) -> str:
    """A chat prompt as one line for tables: the last user turn."""
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), prompt[-1]["content"])
