"""Read plain-text corpora into documents, refusing bad files with the file (and line) named.

Torch-free: the orchestrator calls it to check data before launching anything.

- `.txt`: UTF-8; paragraphs separated by blank lines are documents; hard line wraps become spaces.
- any row source (`.jsonl`, `.parquet`, a folder, a Hub dataset; see rows.datasources): a non-empty string
  column "text" per row (`columns: {content: text}` renames another).
"""

from __future__ import annotations

import re
from pathlib import Path

from core.errors import InputError
from rows.datasources import DataSource, source_of, source_rows
from rows.textfiles import BadRow, read_utf8

_BLANK_LINES = re.compile(r"\n\s*\n")
_WHITESPACE = re.compile(r"\s+")


def read_documents(source: DataSource | str | Path) -> list[str]:
    """The documents of one corpus source; InputError naming the source (and line or row) if it is unusable."""
    source = source_of(source)
    if source.is_corpus_text():
        path = Path(source.path)
        docs = [_WHITESPACE.sub(" ", p).strip() for p in _BLANK_LINES.split(read_utf8(path, "UTF-8 text"))]
        docs = [d for d in docs if d]
    else:
        docs = list(_row_documents(source))
    if not docs:
        raise InputError(f"{source.label()}: no text (empty); expected at least one document")
    return docs


def _row_documents(source: DataSource):
    for where, row in source_rows(source):
        if isinstance(row, BadRow):
            raise InputError(f"{where}: {row}")
        value = row.get("text")
        if not isinstance(value, str) or not value.strip():
            raise InputError(f'{where}: expected a non-empty string "text" (columns: {", ".join(row)}; '
                             "rename one with the entry's columns)")
        yield value.strip()


def corpus_problems(sources: list) -> list[str]:
    """Every unusable source among `sources`, one message each (empty when all are fine). Row sources are
    streamed: no document is kept."""
    problems = []
    for source in map(source_of, sources):
        try:
            if source.is_corpus_text():
                read_documents(source)
            elif sum(1 for _ in _row_documents(source)) == 0:  # every row checked, none kept
                problems.append(f"{source.label()}: no text (empty); expected at least one document")
        except InputError as e:
            problems += e.problems
    return problems
