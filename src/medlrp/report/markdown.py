"""A small Markdown subset to HTML, for report sections other commands add (metrics tables, notes).

Supported: ``#`` headings, pipe tables, ``-``/``*`` lists, paragraphs, inline ``code``, ``**bold**`` and
``*italic*``. Everything is HTML-escaped first, so a section cannot inject markup or scripts.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])"), r"<em>\1</em>"),
]


_BULLET = re.compile(r"^\s*[-*]\s+")


def _inline(text: str) -> str:
    out = html.escape(text.strip(), quote=False)
    for pattern, replacement in _INLINE:
        out = pattern.sub(replacement, out)
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _is_rule(line: str) -> bool:
    return bool(re.fullmatch(r"\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?", line.strip()))


def markdown_to_html(text: str) -> str:
    """Convert the supported Markdown subset to HTML."""
    lines = text.strip("\n").splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,4})\s+(.*)", line):
            level = len(m.group(1)) + 2  # sections sit under the report's <h1>/<h2>
            out.append(f"<h{min(level, 6)}>{_inline(m.group(2))}</h{min(level, 6)}>")
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _is_rule(lines[i + 1]):
            header = _cells(line)
            i += 2
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append(_table_html(header, rows, escape=_inline))
        elif re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append("<li>" + _inline(_BULLET.sub("", lines[i])) + "</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while (
                i < len(lines) and lines[i].strip() and not re.match(r"(#{1,4}\s|\s*[-*]\s|\s*\|)", lines[i])
            ):
                para.append(lines[i])
                i += 1
            if not para:  # a lone table-looking line without a rule: show it as text
                para, i = [lines[i]], i + 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def _table_html(header: Sequence[str], rows: Iterable[Sequence[Any]], escape: Any = None) -> str:
    esc = escape or (lambda v: html.escape(str(v), quote=False))
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """An HTML table of ``rows`` (dicts); floats rounded to ``digits`` significant places."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}g}"
        return "" if value is None else str(value)

    return _table_html(cols, ([fmt(r.get(c)) for c in cols] for r in rows))
