"""Reading data files as text, torch-free: UTF-8 with the bad line named, JSON lines one object each, streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from core.errors import InputError


class BadRow(ValueError):
    """A row that cannot be used; the message says what was expected."""


def read_utf8(path: Path, expected: str) -> str:
    """The file's text; InputError naming the file (and the line of the first bad byte) otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 (byte {e.start}); expected {expected}") from None


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict | BadRow]]:
    """(line number, parsed object or why the line is unusable) for each non-blank line of a JSON-lines file,
    read line by line (a bad byte is named by its line, and the file is never held whole)."""
    try:
        handle = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, BadRow(f"not valid UTF-8 (byte {e.start} of the line); expected UTF-8 JSON lines")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                yield number, BadRow(f"not valid JSON ({e.msg}); expected one object per line")
                continue
            except RecursionError:
                yield number, BadRow("JSON nested too deeply; expected one flat object per line")
                continue
            yield number, row if isinstance(row, dict) else BadRow(f"expected a JSON object, got {type(row).__name__}")
