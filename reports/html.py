"""HTML assembly: one self-contained page (plotly.js inlined once, images as data URIs, no external requests).

Everything that comes from the run (names, errors, the spec) passes through :func:`html.escape` here;
figures are serialised by plotly, whose JSON escapes ``<`` as ``\\u003c``.
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass, field

import pandas as pd
import plotly.io as pio

from reports.plots import TEMPLATE, GalleryRow, Plot


@functools.cache
def _template() -> dict:
    """The plotly template as plain JSON, computed once per process."""
    return pio.templates[TEMPLATE].to_plotly_json()


CSS = """
:root { --fg:#1d2330; --muted:#5b6472; --line:#d9dde3; --bg:#f6f7f9; --accent:#2457c5; --bad:#b3261e; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); }
header { padding:18px 28px; background:#10213f; color:#fff; }
header h1 { margin:0 0 4px; font-size:22px; }
header .sub { color:#c9d3e6; font-size:13px; }
.layout { display:flex; align-items:flex-start; }
nav { position:sticky; top:0; width:230px; min-width:230px; max-height:100vh; overflow:auto; padding:16px
12px 16px 20px;
      border-right:1px solid var(--line); background:var(--bg); font-size:13px; }
nav ol { padding-left:18px; margin:6px 0; } nav a { color:var(--accent); text-decoration:none; }
main { flex:1; min-width:0; padding:10px 28px 60px; }
section { border-bottom:1px solid var(--line); padding:8px 0 18px; }
h2 { font-size:19px; margin:18px 0 8px; } h3 { font-size:15px; margin:16px 0 6px; }
p.note, .note { color:var(--muted); font-size:12.5px; }
.banner { padding:10px 14px; border-radius:6px; margin:10px 0; background:#fff4e5; border:1px solid #f0c27b; }
.banner.bad { background:#fdecea; border-color:#e6a29c; color:var(--bad); }
.table-wrap { overflow:auto; max-height:520px; border:1px solid var(--line); border-radius:4px; margin:6px
0 12px; }
table { border-collapse:collapse; font-size:12.5px; width:max-content; min-width:100%; }
th, td { padding:4px 9px; border-bottom:1px solid #eceef1; text-align:left; white-space:nowrap;
vertical-align:top; }
th { position:sticky; top:0; background:#eef1f5; z-index:1; }
td.err { white-space:pre-wrap; font-family:ui-monospace,monospace; font-size:11.5px; max-width:760px; }
th.oracle { background:#f3e8fd; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(520px,1fr)); gap:10px; }
.plot { border:1px solid var(--line); border-radius:4px; padding:4px; min-height:200px; background:#fff; }
.gallery figure { margin:8px 0 14px; } .gallery img { max-width:100%; border:1px solid var(--line); }
.gallery figcaption { font-size:12px; color:var(--muted); }
pre { background:var(--bg); border:1px solid var(--line); padding:10px; overflow:auto; font-size:12px; }
.files code { font-size:12px; }
table.sortable th { cursor:pointer; user-select:none; }
table.sortable th:hover { background:#e2e7ef; }
table.sortable th[aria-sort="ascending"]::after { content:" \\25B2"; font-size:10px; }
table.sortable th[aria-sort="descending"]::after { content:" \\25BC"; font-size:10px; }
"""

# Click a header of a table.sortable to sort by it (again: reverse). Cells sort by their leading number when
# both have one (numbers before text either way, so '–' stays last), else as text. Static code: it reads only
# the DOM, so it needs no escaping of run data.
SORT_JS = """
(function () {
  function num(cell) {
    var v = parseFloat(cell.textContent.trim().replace(/\\u2212/g, '-'));
    return isNaN(v) ? null : v;
  }
  document.querySelectorAll('table.sortable').forEach(function (tbl) {
    var heads = tbl.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener('click', function () {
        var dir = th.getAttribute('aria-sort') === 'ascending' ? 'descending' : 'ascending';
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', dir);
        var sign = dir === 'ascending' ? 1 : -1;
        var body = tbl.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = num(a.cells[col]), y = num(b.cells[col]);
          if (x !== null && y !== null) { return sign * (x - y); }
          if (x !== null) { return -1; }
          if (y !== null) { return 1; }
          return sign * a.cells[col].textContent.localeCompare(b.cells[col].textContent);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


@dataclass
class Section:
    """A top-level section of the page (listed in the table of contents)."""

    key: str
    title: str
    body: list[str] = field(default_factory=list)

    def add(self, *parts: str) -> Section:
        """Append HTML fragments (already escaped)."""
        self.body.extend(parts)
        return self


def esc(text: object) -> str:
    """HTML-escape run-provided text (quotes too: values also land in attributes)."""
    return html.escape("" if text is None else str(text), quote=True)


def table(
    df: pd.DataFrame,
    caption: str = "",
    oracle: bool = False,
    error_cols: tuple[str, ...] = ("error",),
    empty: str = "no rows",
    sortable: bool = False,
) -> str:
    """Escaped HTML table of a text frame; oracle headers (already labelled) get their own colour.

    ``sortable`` tables sort by a column when its header is clicked (:data:`SORT_JS`).
    """
    if df.empty:
        return f'<p class="note">{esc(empty)}</p>'
    head = "".join(
        f'<th class="oracle">{esc(c)}</th>'
        if oracle and str(c).startswith("oracle")
        else f"<th>{esc(c)}</th>"
        for c in df.columns
    )
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for col, val in zip(df.columns, row, strict=True):
            cls = ' class="err"' if col in error_cols else ""
            cells.append(
                f"<td{cls}>{esc('' if val is None or (isinstance(val, float) and pd.isna(val)) else val)}"
                "</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f'<p class="note">{caption}</p>' if caption else ""
    cls = ' class="sortable"' if sortable else ""
    return (
        f'{cap}<div class="table-wrap"><table{cls}><thead><tr>{head}</tr></thead><tbody>'
        + "".join(body)
        + "</tbody></table></div>"
    )


def figure(plot: Plot) -> str:
    """A plotly figure as a div + script; plotly.js itself is loaded once in the page head."""
    fig = plot.figure.to_plotly_json()
    fig["layout"]["template"] = _template()
    inner = pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        div_id=plot.key,
        validate=False,
        config={"displaylogo": False, "responsive": True},
    )
    return f'<div class="plot plot-{esc(plot.kind)}" data-kind="{esc(plot.kind)}">{inner}</div>'


def figures(plots: list[Plot], grid: bool = True) -> str:
    """Several figures, in a responsive grid by default."""
    if not plots:
        return ""
    inner = "".join(figure(p) for p in plots)
    return f'<div class="grid">{inner}</div>' if grid else inner


def gallery(rows: list[GalleryRow]) -> str:
    """Inline PNGs (data URIs) with escaped captions."""
    if not rows:
        return '<p class="note">No anomaly maps in this run (maps/ is empty or missing).</p>'
    items = "".join(
        f'<figure><img alt="{esc(r.caption)}" src="{r.data_uri}"><figcaption>{esc(r.caption)}'
        "</figcaption></figure>"
        for r in rows
    )
    return f'<div class="gallery">{items}</div>'


def pre(text: str) -> str:
    """Escaped preformatted text (the spec, long errors)."""
    return f"<pre>{esc(text)}</pre>"


def document(title: str, subtitle: str, sections: list[Section], plotly_js: str) -> str:
    """The full page: header, table of contents, sections; plotly.js embedded once in a single script tag."""
    toc = "".join(f'<li><a href="#{esc(s.key)}">{esc(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>{"".join(s.body)}</section>' for s in sections
    )
    safe_js = plotly_js.replace("</script", "<\\/script")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{safe_js}</script></head><body>'
        f'<header><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div></header>'
        f'<div class="layout"><nav><strong>Contents</strong><ol>{toc}</ol></nav><main>{body}</main></div>'
        f"<script>{SORT_JS}</script></body></html>\n"
    )
