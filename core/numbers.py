"""Numbers as tables and sentences print them (status, report, findings)."""

from __future__ import annotations


def fmt(value) -> str:
    """4 significant digits, integers with thousands separators, '–' for none."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent(value) -> str:
    """A share as a whole percentage ('67%')."""
    return "–" if value is None else f"{100 * value:.0f}%"
