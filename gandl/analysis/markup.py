"""Tables and reports as markdown and HTML: the light helpers (pandas only) that the report and sweeps share.

A report is a list of blocks, rendered to markdown and to HTML from the same structure:
("heading", level, text) | ("text", str) | ("table", DataFrame, show index) | ("figure", alt, path relative
to the report) | ("bullets", [str]).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping

import numpy as np
import pandas as pd

Block = tuple


def cell(v) -> str:
    """A table cell as text: floats to 3 decimals, NaN as '—'."""
    if isinstance(v, (float, np.floating)):
        return "—" if np.isnan(v) else f"{v:.3f}"
    return str(v)


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


def render_markdown(blocks: list[Block]) -> str:
    """report.md: figures are links relative to the report."""
    parts = []
    for kind, *args in blocks:
        if kind == "heading":
            parts.append(f"{'#' * args[0]} {args[1]}\n")
        elif kind == "text":
            parts.append(f"{args[0]}\n")
        elif kind == "table":
            parts.append(markdown_table(*args))
        elif kind == "figure":
            parts.append(f"![{args[0]}]({args[1]})\n")
        else:
            parts.append("".join(f"- {item}\n" for item in args[0]))
    return "\n".join(parts)


_HTML_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
               "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
               "th:first-child,td:first-child{text-align:left}img{max-width:100%}")


def render_html(blocks: list[Block], figures: Mapping[str, bytes], title: str = "GAN-DL analysis") -> str:
    """One self-contained page: each figure block's PNG (`figures[path]`) embedded as a data URI."""
    parts = []
    for kind, *args in blocks:
        if kind == "heading":
            parts.append(f"<h{args[0]}>{html.escape(args[1])}</h{args[0]}>")
        elif kind == "text":
            parts.append(f"<p>{html.escape(args[0])}</p>")
        elif kind == "table":
            parts.append(html_table(*args))
        elif kind == "figure":
            data = base64.b64encode(figures[args[1]]).decode("ascii")
            parts.append(f'<img alt="{html.escape(args[0])}" src="data:image/png;base64,{data}">')
        else:
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in args[0]) + "</ul>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_HTML_STYLE}</style></head>\n<body>\n{body}\n</body>\n</html>\n")
