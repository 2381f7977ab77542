"""`rlhf schema KIND`: a kind's settings, read from its config class's JSON Schema (pydantic's), as rows of key
path, type, default and description, as a markdown table (`--markdown`; every kind's: docs/settings.md), or as
the JSON Schema itself for editors (`--json`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core.errors import InputError
from core.schema import StageConfig
from pipeline.registry import KINDS


@dataclass(frozen=True)
class SettingRow:
    """One setting of a kind: where it goes in the pipeline file, what it takes, what it is when left out."""

    key: str
    type: str
    default: str
    description: str
    fingerprinted: bool


def kind_config(kind: str) -> type[StageConfig]:
    """The config class of `kind`, or a one-line refusal naming the kinds there are."""
    if kind not in KINDS:
        raise InputError(f"rlhf schema {kind}: no such kind (kinds: {', '.join(KINDS)})")
    return KINDS[kind]


def json_schema(kind: str) -> dict:
    """The JSON Schema of one stage of `kind` (pydantic's, with the kind's description)."""
    return kind_config(kind).model_json_schema()


def setting_rows(kind: str) -> list[SettingRow]:
    """Every setting of `kind`, nested sections flattened to dotted keys; a section that takes one of several
    shapes (a labeler's `kind: rule | judge | …`) lists each shape's settings under `section[kind=…]`."""
    schema = json_schema(kind)
    return list(_rows(schema, schema, prefix="", fingerprinted=True))


def _rows(node: dict, root: dict, *, prefix: str, fingerprinted: bool):
    required = set(node.get("required", ()))
    for name, field in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        in_fingerprint = fingerprinted and field.get("fingerprint", True)
        default = "required" if name in required else _value(field.get("default"))
        sections = _sections(field, root)
        if sections and len(sections) == 1 and not _is_optional(field, root):
            yield SettingRow(key, "section", "required" if name in required else "",
                             _description(field, sections[0]), in_fingerprint)
            yield from _rows(sections[0], root, prefix=f"{key}.", fingerprinted=in_fingerprint)
            continue
        yield SettingRow(key, _type(field, root), default, _description(field, None), in_fingerprint)
        items = [item for shape in _alternatives(field, root) if shape.get("type") == "array"
                 for item in _sections(shape.get("items", {}), root)]
        for item in items:  # a list of sections (data sources): the settings of each entry
            yield from _rows(item, root, prefix=f"{key}[].", fingerprinted=in_fingerprint)
        for section in sections:
            tag = _tag(section)
            yield from _rows(section, root, prefix=f"{key}[{tag}]." if tag else f"{key}.",
                             fingerprinted=in_fingerprint)


def _resolve(node: dict, root: dict) -> dict:
    """A `$ref` followed into `$defs`."""
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _alternatives(node: dict, root: dict) -> list[dict]:
    """The shapes a field takes: the members of anyOf / oneOf, or the node itself."""
    node = _resolve(node, root)
    members = node.get("anyOf") or node.get("oneOf")
    if not members:
        return [node]
    return [shape for member in members for shape in _alternatives(member, root)]


def _sections(field: dict, root: dict) -> list[dict]:
    """The nested objects with settings of their own that a field may hold."""
    return [shape for shape in _alternatives(field, root) if shape.get("properties")]


def _is_optional(field: dict, root: dict) -> bool:
    return any(shape.get("type") == "null" for shape in _alternatives(field, root))


def _tag(section: dict) -> str:
    """`kind=rule` for one member of a tagged union (its `kind` is a one-value literal)."""
    kind = section.get("properties", {}).get("kind", {})
    value = kind.get("const", (kind.get("enum") or [None])[0] if len(kind.get("enum", [])) == 1 else None)
    return f"kind={value}" if value is not None else ""


def _type(field: dict, root: dict) -> str:
    """A short type: integer, number, a | b (choices), list of …, section, … or null."""
    names = []
    for shape in _alternatives(field, root):
        if shape.get("properties"):
            tag = _tag(shape)
            names.append(f"section [{tag}]" if tag else "section")
        elif "enum" in shape or "const" in shape:
            names.append(" | ".join(json.dumps(v) for v in shape.get("enum", [shape.get("const")])))
        elif shape.get("type") == "array":
            names.append(f"list of {_type(shape.get('items', {}), root)}")
        elif shape.get("type") == "object":
            values = shape.get("additionalProperties")
            names.append(f"mapping to {_type(values, root)}" if isinstance(values, dict) else "mapping")
        else:
            names.append({"null": "null"}.get(shape.get("type"), shape.get("type", "any")))
    unique = list(dict.fromkeys(names))
    return " or ".join(unique)


def _value(value: Any) -> str:
    """A default as the pipeline file would spell it."""
    if value is None:
        return "null"
    return json.dumps(value)


def _description(field: dict, section: dict | None) -> str:
    text = field.get("description") or (section or {}).get("description", "")
    return " ".join(text.split())


def render_rows(kind: str) -> str:
    """`rlhf schema KIND` as plain text: the kind's docstring, then one line per setting."""
    config = kind_config(kind)
    lines = [f"{kind}: {' '.join((config.__doc__ or '').split())}", ""]
    for row in setting_rows(kind):
        mark = "" if row.fingerprinted else "  (not in the fingerprint)"
        default = f" = {row.default}" if row.default else ""
        lines.append(f"{row.key}: {row.type}{default}{mark}")
        if row.description:
            lines.append(f"    {row.description}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text for one cell of a markdown table: pipes escaped, no line breaks."""
    return " ".join(text.split()).replace("|", "\\|")


def render_markdown(kind: str) -> str:
    """One kind's settings as a markdown section: its docstring, then a table of key, type, default, meaning."""
    config = kind_config(kind)
    lines = [f"## {kind}", "", " ".join((config.__doc__ or "").split()), "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    for row in setting_rows(kind):
        meaning = row.description if row.fingerprinted else f"*(not in the fingerprint)* {row.description}"
        lines.append(f"| `{row.key}` | {_cell(row.type)} | {_cell(row.default)} | {_cell(meaning)} |")
    return "\n".join(lines)


def kind_summaries() -> list[tuple[str, str]]:
    """Each kind with the first sentence of its docstring, in the registry's order (`rlhf schema` alone)."""
    return [(kind, " ".join((config.__doc__ or "").split()).split(". ")[0].rstrip(".") + ".")
            for kind, config in KINDS.items()]


def settings_reference() -> str:
    """docs/settings.md: every kind's settings, generated from the schemas (`rlhf schema --markdown`)."""
    intro = ["# Settings of every stage kind", "",
             "Generated from the kinds' schemas by `rlhf schema --markdown > docs/settings.md`; "
             "`tests/unit/test_settings_doc.py` fails when it is out of date. What each kind does, reads, "
             "writes and reports: [kinds.md](kinds.md).", "",
             " · ".join(f"[{kind}](#{kind})" for kind in KINDS)]
    return "\n\n".join(["\n".join(intro), *(render_markdown(kind) for kind in KINDS)]) + "\n"
