"""Read plain-text corpora into documents, refusing bad files with the file (and line) named.

Torch-free: the orchestrator calls it to check data before launching anything.

- `.txt`: UTF-8; paragraphs separated by blank lines are documents; hard line wraps become spaces.
- `.jsonl`: one JSON object per line with a non-empty string field "text".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.errors import InputError

_BLANK_LINES = re.compile(r"\n\s*\n")
_WHITESPACE = re.compile(r"\s+")


def read_documents(path: str | Path) -> list[str]:
    """The documents of one corpus file; InputError naming the file (and line) if it is unusable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 (byte {e.start}); expected UTF-8 text") from None
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
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InputError(f"{path}:{number}: not valid JSON ({e.msg}); expected one object per line") from None
        value = row.get("text") if isinstance(row, dict) else None
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
