"""Tables and reports as markdown and HTML: the light helpers (pandas only) that the report and sweeps share.

A report is a list of blocks, rendered to markdown and to HTML from the same structure:
("heading", level, text) | ("text", str) | ("table", DataFrame, show index) | ("figure", alt, path relative
to the report) | ("bullets", [str]).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

Block = tuple


def cell(v) -> str:
    """A table cell as text: floats to 3 decimals, NaN as '—'."""
    if isinstance(v, (float, np.floating)):
        return "—" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def slug(name: str) -> str:
    """`name` as a file or folder name: runs of other characters than letters, digits, '_', '.', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "features"


def markdown_table(frame: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured markdown table (floats to 3 decimals, NaN as '—')."""
    frame = frame.reset_index() if index else frame
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_table(frame: pd.DataFrame, index: bool = True) -> str:
    """The same table as `markdown_table`, as an HTML <table>."""
    frame = frame.reset_index() if index else frame
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>\n"
                   for row in frame.itertuples(index=False))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n"


def _render(blocks: list[Block], renderers: Mapping[str, Callable[..., str]]) -> list[str]:
    """Each block through its kind's renderer: one structure, two formats."""
    return [renderers[kind](*args) for kind, *args in blocks]


def render_markdown(blocks: list[Block]) -> str:
    """report.md: figures are links relative to the report."""
    return "\n".join(_render(blocks, {
        "heading": lambda level, text: f"{'#' * level} {text}\n",
        "text": lambda text: f"{text}\n",
        "table": markdown_table,
        "figure": lambda alt, path: f"![{alt}]({path})\n",
        "bullets": lambda items: "".join(f"- {item}\n" for item in items),
    }))


_HTML_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
               "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
               "th:first-child,td:first-child{text-align:left}img{max-width:100%}")


def render_html(blocks: list[Block], figures: Mapping[str, bytes], title: str = "GAN-DL analysis") -> str:
    """One self-contained page: each figure block's PNG (`figures[path]`) embedded as a data URI."""
    def figure(alt: str, path: str) -> str:
        data = base64.b64encode(figures[path]).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    body = "\n".join(_render(blocks, {
        "heading": lambda level, text: f"<h{level}>{html.escape(text)}</h{level}>",
        "text": lambda text: f"<p>{html.escape(text)}</p>",
        "table": html_table,
        "figure": figure,
        "bullets": lambda items: "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>",
    }))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_HTML_STYLE}</style></head>\n<body>\n{body}\n</body>\n</html>\n")
