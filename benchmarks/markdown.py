"""Markdown tables of benchmark rows (printed, and pasted into RESULTS.md)."""

from __future__ import annotations


def cell(value, fmt: str = "", unit: str = "") -> str:
    """A number formatted with `fmt` (and its unit), or an en dash when it is missing."""
    return "–" if value is None else format(value, fmt) + unit


def dict_table(title: str, columns: list[tuple[str, str, str, str]], rows: list[dict]) -> str:
    """`columns` are (header, key, format, unit); one line per row dict, under a bold title."""
    lines = [f"**{title}**", "", "| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(key), fmt, unit) for _, key, fmt, unit in columns) + " |")
    return "\n".join(lines)
