"""One static, self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no scripts, no fonts.

The page opens offline from a file:// URL and makes no request at all (tested in headless Chromium).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1rem 1.5rem 3rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .82rem; display: block; overflow-x: auto; max-width: 100%; }
caption { text-align: left; font-weight: 600; padding: .2rem 0; }
th, td { border: 1px solid #ddd; padding: .22rem .5rem; text-align: right; white-space: nowrap; }
th:first-child, thead th { text-align: left; background: #f6f6f6; }
td.missing { color: #999; text-align: center; }
figure { margin: 1rem 0; } figure img { max-width: min(100%, 860px); height: auto; border: 1px solid #eee; }
figcaption, .howto { font-size: .88rem; color: #444; } .howto { background: #f3f7fb; padding: .3rem .6rem; border-left: 3px solid #4a7bb7; }
.note { font-size: .8rem; color: #555; margin: .2rem 0; } .rests { font-size: .8rem; color: #666; }
ul.sources { font-size: .85rem; } .warn { color: #8a5300; }
"""


@dataclass
class PageFigure:
    """One figure on the page: its PNG bytes, a caption, a "how to read this" line and what it rests on."""

    title: str
    png: bytes
    how_to_read: str
    rests_on: str
    files: list[str] = field(default_factory=list)  # the PNG/SVG files beside the page, linked for download

    def to_html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        links = " · ".join(f'<a href="{escape(name)}">{escape(Path(name).suffix[1:].upper())}</a>' for name in self.files)
        return (f"<figure><img alt=\"{escape(self.title)}\" src=\"data:image/png;base64,{data}\">"
                f"<figcaption><b>{escape(self.title)}</b>{' (' + links + ')' if links else ''}</figcaption>"
                f"<p class='howto'><b>How to read this:</b> {escape(self.how_to_read)}</p>"
                f"<p class='rests'>Rests on: {escape(self.rests_on)}</p></figure>")


@dataclass
class Section:
    """A titled part of the page: paragraphs/tables as ready HTML, and figures."""

    title: str
    parts: list[str] = field(default_factory=list)

    def add_text(self, text: str, css: str = "") -> None:
        self.parts.append(f"<p{f' class={css!r}' if css else ''}>{escape(text)}</p>")

    def add_html(self, html: str) -> None:
        self.parts.append(html)

    def add_figure(self, figure: PageFigure) -> None:
        self.parts.append(figure.to_html())

    def to_html(self) -> str:
        return f"<section><h2>{escape(self.title)}</h2>{''.join(self.parts)}</section>"


def frame_to_html(frame, floatfmt: str = ".3f", caption: str = "") -> str:
    """A pandas DataFrame as a plain HTML table (floats formatted, NaN as the missing mark)."""
    import math

    from .tables import MISSING

    def cell(value) -> str:
        if isinstance(value, float):
            return MISSING if math.isnan(value) else format(value, floatfmt)
        return escape(str(value))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False))
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_page(title: str, intro: list[str], sections: list[Section]) -> str:
    """The whole page as one string (UTF-8, no external resource)."""
    contents = "".join(f"<li>{escape(s.title)}</li>" for s in sections)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>{''.join(intro)}<ol>{contents}</ol>"
            + "".join(s.to_html() for s in sections) + "</body></html>")
