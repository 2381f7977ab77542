"""Read plain-text corpora into documents, refusing bad files with the file (and line) named.

Torch-free: the orchestrator calls it to check data before launching anything.

- `.txt`: UTF-8; paragraphs separated by blank lines are documents; hard line wraps become spaces.
- `.jsonl`: one JSON object per line with a non-empty string field "text".
"""

from __future__ import annotations

import re
from pathlib import Path

from core.errors import InputError
from core.textfiles import BadRow, jsonl_objects, read_utf8

_BLANK_LINES = re.compile(r"\n\s*\n")
_WHITESPACE = re.compile(r"\s+")


def read_documents(path: str | Path) -> list[str]:
    """The documents of one corpus file; InputError naming the file (and line) if it is unusable."""
    path = Path(path)
    text = read_utf8(path, "UTF-8 text")
    if path.suffix == ".jsonl":
        docs = _jsonl_documents(path, text)
    elif path.suffix in (".txt", ".md", ".text"):
        docs = [_WHITESPACE.sub(" ", p).strip() for p in _BLANK_LINES.split(text)]
        docs = [d for d in docs if d]
    else:
        raise InputError(f"{path}: unsupported corpus format {path.suffix!r}; expected .txt or .jsonl")
    if not docs:
        raise InputError(f"{path}: no text (empty file); expected at least one document")
    return docs


def _jsonl_documents(path: Path, text: str) -> list[str]:
    docs = []
    for number, row in jsonl_objects(text):
        value = row.get("text") if isinstance(row, dict) else None
        if isinstance(row, BadRow):
            raise InputError(f"{path}:{number}: {row}")
        if not isinstance(value, str) or not value.strip():
            raise InputError(f'{path}:{number}: expected an object with a non-empty string "text"')
        docs.append(value.strip())
    return docs


def corpus_problems(paths: list[str]) -> list[str]:
    """Every unusable file among `paths`, one message each (empty when all are fine)."""
    problems = []
    for path in paths:
        try:
            read_documents(path)
        except InputError as e:
            problems += e.problems
    return problems
