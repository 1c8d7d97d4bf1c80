"""A self-contained HTML report (images embedded as base64) built from a few plain blocks:
headings, paragraphs, tables and figures. The demo fills it; nothing here knows about UniEmo."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from uniemo.io import write_text

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:0.5em;vertical-align:top}figcaption{font-size:0.85em;color:#555;max-width:520px}
img{max-width:520px;image-rendering:pixelated}.note{background:#fff8e0;border-left:4px solid #e0b000;padding:0.5em 1em}
"""


@dataclass
class Table:
    header: list[str]
    rows: list[list[object]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str = ""


@dataclass
class Section:
    title: str
    blocks: list[object] = field(default_factory=list)  # str (a paragraph), Table or Figure


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("—" if value is None else str(value))


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in t.rows)
    caption = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{caption}<tr>{head}</tr>{body}</table>"


def _figure(f: Figure) -> str:
    data = base64.b64encode(Path(f.path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(f.caption)}">'
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")


def _block(block: object) -> str:
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block) if Path(block.path).is_file() else ""
    return f"<p>{html.escape(str(block))}</p>"


def render(title: str, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.extend(_block(b) for b in section.blocks)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, title: str, sections: list[Section]) -> None:
    write_text(path, render(title, sections))
