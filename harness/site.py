"""The HTML leaderboard: one self-contained page per report and an index of published leaderboards.

One file, no server, no network: the style sheet and a small vanilla script are
inline, the figures are inline SVG (:mod:`harness.site_svg`). The script sorts a
table by any column (click its header), filters rows by text and by method (the
figures dim the other methods), and shows a point's row on hover.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Sequence

from harness.site_svg import attr, key_svg, view_svg

if TYPE_CHECKING:
    from harness.report import Section

CSS = """
body{font:14px/1.4 system-ui,sans-serif;max-width:1400px;margin:0 auto;padding:0 16px;color:#222}
h1{margin:16px 0 4px}h2{margin:28px 0 4px;border-top:1px solid #ddd;padding-top:12px}
h3{font-size:13px;margin:10px 0 2px;color:#444}
pre{background:#f6f6f6;padding:6px 8px;overflow-x:auto;font-size:12px}
.controls{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd;z-index:2}
.controls input,.controls select{font:inherit;padding:2px 6px;margin-right:8px}
.facets{display:flex;flex-wrap:wrap;gap:4px}
svg.plot{font-size:10px;font-family:system-ui,sans-serif;overflow:visible}
svg.plot .facet{font-size:12px;font-weight:600}
svg.plot .grid{stroke:#eee}
svg.plot .pt{cursor:pointer}svg.plot .pt:hover,svg.plot .pt:focus{stroke-width:3;outline:none}
svg.plot .ring{pointer-events:none}
.series.dim{opacity:.08}.series.dim .pt{pointer-events:none}
.legend{display:flex;flex-wrap:wrap;gap:2px 10px;margin:6px 0;font-size:12px}
.legend .key{font:inherit;background:none;border:1px solid transparent;border-radius:3px;cursor:pointer;padding:0 3px}
.legend .key[aria-pressed=true]{border-color:#333;background:#f3f3f3}
.legend span,.legend .key{display:inline-flex;align-items:center;gap:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tr.dense td{font-weight:600}
ul.notes{margin:4px 0;padding-left:20px;color:#444}
#tip{position:absolute;pointer-events:none;white-space:pre;background:#222;color:#fff;padding:4px 7px;
border-radius:4px;font-size:12px;z-index:5;max-width:480px}
[hidden]{display:none!important}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var filter = document.getElementById("filter"), select = document.getElementById("method");
  var shown = document.getElementById("shown"), tip = document.getElementById("tip");
  function key(cell, numeric) {
    var raw = cell.getAttribute("data-v");
    if (raw === null) raw = cell.textContent;
    if (!numeric) return raw.toLowerCase();
    return raw === "" ? NaN : Number(raw);
  }
  function sortBy(th) {
    var row = th.parentNode, body = th.closest("table").tBodies[0];
    var column = Array.prototype.indexOf.call(row.children, th);
    var numeric = th.getAttribute("data-type") === "num";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(row.children, function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[column], numeric), y = key(b.cells[column], numeric);
      if (numeric) {
        if (isNaN(x) || isNaN(y)) return Number(isNaN(x)) - Number(isNaN(y));  /* missing last either way */
        return ascending ? x - y : y - x;
      }
      return ascending ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function apply() {
    var text = filter ? filter.value.trim().toLowerCase() : "", method = select ? select.value : "";
    var count = 0, total = 0;
    document.querySelectorAll("table.filterable tbody tr").forEach(function (row) {
      var ok = (!method || row.getAttribute("data-method") === method) &&
        (!text || row.textContent.toLowerCase().indexOf(text) >= 0);
      row.hidden = !ok; total += 1; if (ok) count += 1;
    });
    document.querySelectorAll("svg .series").forEach(function (g) {
      g.classList.toggle("dim", method !== "" && g.getAttribute("data-method") !== method);
    });
    document.querySelectorAll("button.key").forEach(function (b) {
      b.setAttribute("aria-pressed", String(method !== "" && b.getAttribute("data-method") === method));
    });
    if (shown) shown.textContent = count + " of " + total + " rows";
  }
  function show(target) {
    tip.textContent = target.getAttribute("data-tip");
    tip.hidden = false;
    var box = target.getBoundingClientRect(), width = document.documentElement.clientWidth;
    var left = box.right + 10 + tip.offsetWidth > width ? box.left - tip.offsetWidth - 10 : box.right + 10;
    tip.style.left = (window.scrollX + Math.max(0, left)) + "px";
    tip.style.top = (window.scrollY + box.top - 6) + "px";
  }
  function hover(event) {
    var target = event.target.closest ? event.target.closest("[data-tip]") : null;
    if (target) show(target); else tip.hidden = true;
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th); }
    });
  });
  document.querySelectorAll("button.key").forEach(function (b) {
    b.addEventListener("click", function () {
      var method = b.getAttribute("data-method");
      select.value = select.value === method ? "" : method;
      apply();
    });
  });
  if (filter) filter.addEventListener("input", apply);
  if (select) select.addEventListener("change", apply);
  document.addEventListener("mouseover", hover);
  document.addEventListener("focusin", hover);
  apply();
})();
"""


def _document(title: str, body: Sequence[str]) -> str:
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", '<link rel="icon" href="data:,">', f"<style>{CSS}</style>",
        "</head><body>", *body, '<div id="tip" role="tooltip" hidden></div>', f"<script>{SCRIPT}</script>",
        "</body></html>", ""])


def _markdown_lines(lines: Sequence[str]) -> list[str]:
    """The regenerate header (Markdown): fenced blocks as ``<pre>``, other lines as paragraphs."""
    out: list[str] = []
    code: list[str] | None = None
    for line in lines:
        if line.startswith("```"):
            if code is not None:
                out.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
            code = [] if code is None else None
        elif code is not None:
            code.append(line)
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    return out


def table_html(shown: Any, keys: Any, numeric: frozenset[str], methods: Sequence[str] | None = None,
               classes: Sequence[str] = (), escape: bool = True) -> str:
    """A sortable, filterable table: text cells (HTML where not ``escape``), each with the raw value it sorts by
    (``data-v``)."""
    head = "".join(f'<th data-key="{attr(c)}"{" data-type=num" if c in numeric else ""}>{html.escape(str(c))}</th>'
                   for c in shown.columns)
    rows = []
    for i, (cells, values) in enumerate(zip(shown.itertuples(index=False), keys.itertuples(index=False))):
        tds = "".join(
            f'<td data-v="{attr(v)}"{" class=num" if c in numeric else ""}>{html.escape(str(cell)) if escape else cell}</td>'
            for c, cell, v in zip(shown.columns, cells, values))
        method = methods[i] if methods is not None else ""
        extra = ' class="dense"' if method == "dense" else ""
        rows.append(f'<tr data-method="{attr(method)}"{extra}>{tds}</tr>')
    return (f'<table class="sortable filterable {" ".join(classes)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _legend(section: Section) -> str:
    keys = [f'<button type="button" class="key" data-method="{attr(m)}" aria-pressed="false">{key_svg(s)}'
            f"{html.escape(m)}</button>" for m, s in sorted(section.styles.items())]
    references = ['<span><svg width="36" height="12" aria-hidden="true"><line x1="1" x2="35" y1="6" y2="6" '
                  'stroke="#000" stroke-dasharray="6,4"/></svg>dense ± sd</span>']
    if section.views[0].chance is not None:
        references.append('<span><svg width="36" height="12" aria-hidden="true"><line x1="1" x2="35" y1="6" y2="6" '
                          'stroke="red" stroke-dasharray="2,3"/></svg>chance</span>')
    references.append('<span><svg width="18" height="16" aria-hidden="true"><circle cx="9" cy="8" r="6.5" '
                      'fill="none" stroke="#000"/></svg>Pareto frontier (speedup view)</span>')
    return f'<div class="legend">{"".join(keys + references)}</div>'


def _section(section: Section, index: int) -> str:
    names = {"sparsity": "against sparsity", "speedup": "against measured speedup (Pareto view)"}
    figures = "".join(f'<h3>{html.escape(section.metric)} {names[v.kind]}</h3><div class="facets">'
                      f"{view_svg(v, section.title + ', ' + v.kind)}</div>" for v in section.views)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in section.notes)
    shown = section.table.rename(columns={"score": section.metric})
    keys = section.keys.rename(columns={"score": section.metric})
    numeric = (section.numeric - {"score"}) | {section.metric}
    return (f'<section class="report" id="section-{index}"><h2>{html.escape(section.title)}</h2>'
            f'<ul class="notes">{notes}</ul>{figures}{_legend(section)}'
            f'{table_html(shown, keys, numeric, list(section.rows["method"]), ("board",))}</section>')


def _controls(methods: Sequence[str]) -> str:
    options = "".join(f'<option value="{attr(m)}">{html.escape(m)}</option>' for m in methods)
    select = f'<select id="method" aria-label="method"><option value="">all methods</option>{options}</select>' \
        if methods else ""
    return (f'<div class="controls"><input id="filter" type="search" placeholder="filter rows: any text" '
            f'aria-label="filter rows">{select}<span id="shown"></span></div>')


def page(title: str, intro: str, header: Sequence[str], sections: Sequence[Section]) -> str:
    """The report page: provenance, then per section its figures, legend and table."""
    methods = sorted({str(m) for s in sections for m in s.rows["method"]})
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", *_markdown_lines(header),
            _controls(methods), *(_section(s, i) for i, s in enumerate(sections))]
    return _document(title, body)


INDEX_COLUMNS = ("leaderboard", "model", "task", "metric", "adapters", "methods", "seeds", "sparsities", "dense",
                 "best method at each sparsity", "flagged rows")


def index_page(entries: Sequence[dict[str, Any]]) -> str:
    """Every published leaderboard, one row each, linking its report page and its CSV."""
    import pandas as pd

    shown, keys = [], []
    for e in entries:
        link = f'<a href="{attr(e["report"])}">{html.escape(e["name"])}</a>' if e["report"] else html.escape(e["name"])
        link += f' <small>(<a href="{attr(e["csv"])}">csv</a>)</small>'
        best = "<br>".join(html.escape(b) for b in e["best"])
        values = [e["name"], e["model"], e["task"], e["metric"], e["adapters"], e["methods"], e["seeds"],
                  e["sparsities"], e["dense"], "; ".join(e["best"]), e["flagged"]]
        cells = [link, *(html.escape(str(v)) for v in values[1:9]), best, str(e["flagged"])]
        shown.append(cells)
        keys.append(values)
    numeric = frozenset({"methods", "seeds", "dense", "flagged rows"})
    table = table_html(pd.DataFrame(shown, columns=list(INDEX_COLUMNS)),
                       pd.DataFrame(keys, columns=list(INDEX_COLUMNS)), numeric, classes=("index",), escape=False)
    body = ["<h1>Published leaderboards</h1>",
            f"<p>{len(entries)} leaderboards. Each links its report (figures and a sortable table) and its CSV; "
            "best method: highest mean score over seeds (lowest for perplexity) at each sparsity.</p>",
            _controls([]), table]
    return _document("Published leaderboards", body)
