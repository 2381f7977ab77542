"""A small document model (headings, paragraphs, tables, images) rendered as Markdown and as one
self-contained HTML file (images inlined as data URIs), so both files always say the same thing."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    css_class: str = ""


@dataclass
class Image:
    path: Path  # a PNG
    alt: str


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> None:
        """Append blocks in order."""
        self.blocks.extend(blocks)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def to_markdown(doc: Document, relative_to: Path) -> str:
    """The document as GitHub-flavoured Markdown; images are linked relative to `relative_to`."""
    out = [f"# {doc.title}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            out += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            out.append("|" + "---|" * len(block.headers))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Image):
            out += [f"![{block.alt}]({block.path.relative_to(relative_to).as_posix()})", ""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .55rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
table.samples td { max-width: 22rem; }
table.samples td.score { white-space: nowrap; text-align: right; }
code { background: #f6f8fa; padding: 0 .25rem; border-radius: 3px; font-size: .88em; }
img { max-width: 100%; border: 1px solid #eaeef2; margin: .4rem 0 1rem; }
.state-fresh { color: #1a7f37; } .state-failed { color: #cf222e; font-weight: bold; }
.state-running { color: #0969da; } .state-other { color: #9a6700; }
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)).replace("\n", "<br>")


def _state_class(text: str) -> str:
    word = text.split()[0] if text.split() else ""
    return {"fresh": "state-fresh", "failed": "state-failed", "running": "state-running"}.get(word, "state-other")


def to_html(doc: Document) -> str:
    """The document as one HTML file with its CSS and images inside."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(doc.title)}</h1>"]
    for block in doc.blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            cls = f' class="{block.css_class}"' if block.css_class else ""
            out.append(f"<table{cls}><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
                       + "</tr></thead><tbody>")
            for row in block.rows:
                cells = []
                for header, cell in zip(block.headers, row):
                    attr = ""
                    if header == "state":
                        attr = f' class="{_state_class(cell)}"'
                    elif header.endswith("score"):
                        attr = ' class="score"'
                    cells.append(f"<td{attr}>{_inline(cell)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode()
            out.append(f'<img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
