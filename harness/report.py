"""``harness report``: Markdown, a self-contained interactive HTML page and PNG plots from a leaderboard.

People look rather than read: per (model, task, adapter, metric) one figure of the
metric against sparsity and one against measured speedup (the Pareto view),
each faceted by granularity (:mod:`harness.report_plots`), and a table whose
numbers read as numbers (``22.7M``, ``1.23x``, no ``nan``). ``report.md`` shows
the PNGs; ``report.html`` (:mod:`harness.site`) is one file with no network
needs: a sortable, filterable table and plots that name a point on hover.
:func:`build_index` gathers a folder of published leaderboards into ``index.html``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness import atomic, leaderboard, provenance, report_plots, site
from harness.errors import UsageError
from harness.records import lower_is_better

INTRO = "Mean ± sd over seeds of every (method, sparsity); speedup is measured, never derived."


@dataclass
class Section:
    """One (model, task, adapter, metric): its rows, their display table, its two figures and notes."""

    title: str
    metric: str
    rows: Any
    table: Any
    keys: Any
    views: list[report_plots.View]
    plots: list[Path]
    notes: list[str]
    styles: dict[str, report_plots.Style]
    numeric: frozenset[str] = frozenset()  # table columns sorted as numbers on the page


def _missing(value: Any) -> bool:
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return value is None or str(value) in ("", "<NA>", "nan")


def number(value: Any, digits: int = 4) -> str:
    """``digits`` significant digits; empty (never ``nan``) when missing, as a one-seed sd is."""
    return "" if _missing(value) else f"{float(value):.{digits}g}"


def count(value: Any) -> str:
    """A parameter count a reader takes in at a glance: ``22.7M``, ``135M``, ``1.5B``."""
    if _missing(value):
        return ""
    value = float(value)
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:#.3g}".rstrip(".") + suffix  # 22.0M, not 22M beside 22.7M
    return f"{value:.0f}"


def speedup(value: Any) -> str:
    return "" if _missing(value) else f"{float(value):.2f}x"


def _integer(value: Any) -> str:
    return "" if _missing(value) else str(int(float(value)))


def _granularity(value: Any) -> str:
    return "" if _missing(value) or str(value) == "none" else str(value)


# (header, aggregate column, formatter, numeric): what a table shows, in this order
TABLE: tuple[tuple[str, str, Callable[[Any], str], bool], ...] = (
    ("method", "method", str, False),
    ("granularity", "granularity", _granularity, False),
    ("sparsity", "sparsity", lambda v: number(v, 3), True),
    ("achieved", "achieved_sparsity", lambda v: number(v, 3), True),
    ("score", "score_mean", number, True),
    ("sd", "score_sd", lambda v: number(v, 2), True),
    ("seeds", "seeds", _integer, True),
    ("speedup", "speedup_mean", speedup, True),
    ("params", "params", count, True),
    ("GFLOPs", "gflops", number, True),
    ("Pareto", "pareto", lambda v: "✓" if v is True or v == 1 else "", False),
    ("flags", "flag_names", lambda v: "" if _missing(v) else str(v).replace(";", ", "), False),
)
NUMERIC = frozenset(header for header, _, _, numeric in TABLE if numeric)


def table(rows: Any) -> tuple[Any, Any]:
    """The display table (text cells) and beside it the raw values a sortable HTML table sorts by."""
    import pandas as pd

    shown, keys = {}, {}
    for header, column, form, numeric in TABLE:
        values = rows[column] if column in rows else pd.Series([None] * len(rows), index=rows.index)
        shown[header] = [form(v) for v in values]
        keys[header] = ["" if _missing(v) else (float(v) if numeric else str(v)) for v in values]
    return pd.DataFrame(shown), pd.DataFrame(keys)


def _tip(row: dict[str, Any]) -> str:
    """What hovering a point says: method, options, sparsity, score ± sd, speedup, params, flags."""
    sd = number(row.get("score_sd"), 2)
    lines = [str(row["method"])]
    if not _missing(row.get("options")):
        lines.append(f"options: {row['options']}")
    if row["method"] != "dense":
        granularity = _granularity(row.get("granularity"))
        lines.append(f"sparsity {number(row['sparsity'], 3)} (achieved {number(row.get('achieved_sparsity'), 3) or '?'})"
                     + (f", granularity {granularity}" if granularity else ""))
    lines.append(f"{row['metric']} {number(row['score_mean'])}" + (f" ± {sd}" if sd else "")
                 + f" ({_integer(row.get('seeds'))} seeds)")
    sd = number(row.get("speedup_sd"), 2)
    lines.append(f"speedup {speedup(row.get('speedup_mean')) or '?'}" + (f" ± {sd}" if sd else ""))
    lines.append(f"params {count(row.get('params')) or '?'}, {number(row.get('gflops')) or '?'} GFLOPs")
    if not _missing(row.get("flag_names")):
        lines.append(f"flags: {str(row['flag_names']).replace(';', ', ')}")
    return "\n".join(lines)


def _notes(rows: Any, metric: str) -> list[str]:
    """The metric's direction, what chance scores, and what was flagged."""
    lower = lower_is_better(metric)
    notes = [f"score: {metric}, {'lower' if lower else 'higher'} is better; Pareto ✓: no other row of this table "
             "is both at least as fast and at least as good."]
    chance = _first(rows.get("chance"))
    what = "a unigram model's perplexity" if lower else "a constant prediction (majority class)"
    notes.append(f"chance ({what}): {number(chance)}" if chance is not None
                 else "chance: not recorded in this leaderboard (written before the chance column)")
    flagged = rows[leaderboard.text_column(rows["flag_names"]) != ""] if "flag_names" in rows else rows.iloc[:0]
    if len(flagged):
        names = sorted({n for text in flagged["flag_names"] for n in str(text).split(";") if n})
        notes.append(f"flagged: {len(flagged)} of {len(rows)} rows ({', '.join(names)}); see the flags column.")
    return notes


def _first(values: Any) -> float | None:
    """The first known value of a column (``None`` when the column is absent or all missing)."""
    import pandas as pd

    if values is None:
        return None
    known = pd.to_numeric(values, errors="coerce").dropna()
    return float(known.iloc[0]) if len(known) else None


def _slug(*parts: str) -> str:
    return "-".join("".join(c if c.isalnum() else "_" for c in str(p)) for p in parts)


def prepare(frame: Any) -> Any:
    """The aggregate with what the figures need: each row's ``method`` label and hover text (``tip``)."""
    frame = frame.assign(method=report_plots.method_labels(frame))
    return frame.assign(tip=[_tip(row) for row in frame.to_dict("records")])


def _sections(frame: Any, folder: Path) -> list[Section]:
    """Per (model, task, adapter, metric): title, rows, table, plots (a plot never mixes metrics).

    A task with one metric keeps the names it always had; the metric joins the
    title and the file names only where a task reports several (lm-eval).
    """
    frame = prepare(frame)
    styles = report_plots.method_styles(frame)
    keys = ["model", "task", "adapter", "metric"]
    metrics = frame.groupby(keys[:3], sort=True)["metric"].nunique()
    sections = []
    for (model, task, adapter, metric), group in frame.groupby(keys, sort=True):
        several = metrics[(model, task, adapter)] > 1
        title = f"{model} × {task} ({adapter})" + (f", {metric}" if several else "")
        stem = _slug(model.split("/")[-1], task, adapter, *([metric] if several else []))
        group = report_plots.with_front(group)
        group = group.assign(_dense=~report_plots.is_dense(group)).sort_values(["_dense", "sparsity", "method"])
        views = [report_plots.plan(group, kind, styles) for kind in ("sparsity", "speedup")]
        plots = [folder / f"{stem}-{kind}.png" for kind in ("sparsity", "speedup")]
        for view, path in zip(views, plots):
            report_plots.save(view, path, title)
        shown, sort_keys = table(group)
        used = {m: styles[m] for m in group["method"] if m in styles}
        sections.append(Section(title, str(metric), group, shown, sort_keys, views, plots, _notes(group, metric), used,
                                NUMERIC))
    return sections


def markdown_table(shown: Any) -> str:
    """A Markdown table of text cells (``|`` escaped)."""
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for cells in shown.itertuples(index=False):
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _source(out: Path) -> tuple[Path, Path, list[str]]:
    """The CSV to read, the default report folder and the regenerate lines: from a bench ``--out`` folder (its
    ``commands.json``), or from a leaderboard CSV (its grid file ``<name>.toml`` beside it, if any)."""
    if out.suffix.lower() != ".csv":
        return out / "leaderboard.csv", out / "report", provenance.header(out)
    if out.name == "leaderboard.csv":
        return out, out.parent / "report", provenance.header(out.parent)
    return out, out.with_suffix(""), _grid_header(out)


def _grid_header(csv: Path) -> list[str]:
    """A published ``NAME.csv``: regenerate from its grid file ``NAME.toml``, and the versions its run recorded
    (``NAME/commands.json``, kept beside its report) when they were kept."""
    from harness import config

    lines = []
    grid = csv.with_suffix(".toml")
    if grid.exists():
        try:
            run = f"harness report {config.load(grid).execution.out}"
        except UsageError:
            run = f"harness report OUT  # the [execution] out of {grid}"
        lines = ["Regenerate (the grid file beside the leaderboard):", "", "```bash", f"harness bench --config {grid}",
                 run, "```", ""]
    recorded = provenance.read(csv.with_suffix(""))
    versions = recorded[-1].get("versions", {}) if recorded else {}
    if versions:
        lines += ["Versions (the run that wrote it): " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    return lines


def _load(source: Path) -> Any:
    if not source.exists():
        hint = "" if source.suffix == ".csv" and source.name != "leaderboard.csv" else \
            f": run 'harness bench --out {source.parent}' first"
        raise UsageError(f"{source} does not exist{hint}")
    table = leaderboard.aggregate(leaderboard.read(source))
    if table.empty:
        raise UsageError(f"{source} has no successful rows to report")
    return table


def build(out: Path, folder: Path | None = None) -> Path:
    """Write ``report.md``, ``report.html`` and the PNGs into ``folder``: by default ``OUT/report`` for a bench
    output folder, or for ``NAME.csv`` the folder ``NAME`` beside it (how ``leaderboards/`` is laid out)."""
    source, default, header = _source(Path(out))
    frame = _load(source)
    folder = Path(folder or default)
    folder.mkdir(parents=True, exist_ok=True)
    sections = _sections(frame, folder)
    md = ["# Leaderboard", "", INTRO, "", *header]
    for section in sections:
        md += [f"## {section.title}", "", *[f"- {note}" for note in section.notes], "",
               *[f"![{p.stem}]({p.name})" for p in section.plots], "", markdown_table(section.table), ""]
    atomic.write_text(folder / "report.md", "\n".join(md))
    atomic.write_text(folder / "report.html", site.page("Leaderboard", INTRO, header, sections))
    return folder


def summary(csv: Path, frame: Any) -> dict[str, Any]:
    """One line of the index: what the leaderboard holds and the best method at each sparsity (first metric)."""
    table = frame.assign(method=report_plots.method_labels(frame))
    pruned = table[~report_plots.is_dense(table)]
    metric = sorted(table["metric"].unique())[0]
    lower = lower_is_better(metric)
    best = []
    for sparsity, rows in pruned[pruned["metric"] == metric].groupby("sparsity", sort=True):
        row = rows.loc[rows["score_mean"].idxmin() if lower else rows["score_mean"].idxmax()]
        adapter = f" ({row['adapter']})" if table["adapter"].nunique() > 1 else ""
        best.append(f"{number(sparsity, 3)}: {row['method']}{adapter} {number(row['score_mean'])}")
    dense = table[report_plots.is_dense(table) & (table["metric"] == metric)]
    page = csv.with_suffix("") / "report.html"
    return {
        "name": csv.stem, "csv": csv.name, "report": f"{csv.stem}/report.html" if page.exists() else "",
        "model": ", ".join(sorted(table["model"].unique())), "task": ", ".join(sorted(table["task"].unique())),
        "metric": metric + (" (lower is better)" if lower else ""),
        "adapters": ", ".join(sorted(table["adapter"].unique())),
        "methods": int(pruned["method"].nunique()), "seeds": int(table["seeds"].max()),
        "sparsities": ", ".join(number(s, 3) for s in sorted(pruned["sparsity"].unique())),
        "dense": ", ".join(number(v) if dense["adapter"].nunique() == 1 else f"{a} {number(v)}"
                           for a, v in zip(dense["adapter"], dense["score_mean"])), "best": best,
        "flagged": int(table["flagged"].sum()),
    }


def build_index(folder: Path, rebuild: bool = True) -> Path:
    """Rebuild the report of every leaderboard CSV in ``folder`` (into ``folder/NAME/``) unless not ``rebuild``,
    and write ``folder/index.html`` linking them, one summary line each. CSVs that are not harness leaderboards
    (analysis summaries) are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--index {folder}: not a folder")
    entries = []
    for csv in sorted(folder.glob("*.csv")):
        try:
            frame = leaderboard.aggregate(leaderboard.read(csv))
        except UsageError:
            continue  # not a leaderboard (no run_id/status column)
        if frame.empty:
            continue
        if rebuild:
            build(csv)
        entries.append(summary(csv, frame))
    if not entries:
        raise UsageError(f"--index {folder}: no leaderboard CSV there")
    atomic.write_text(folder / "index.html", site.index_page(entries))
    return folder / "index.html"
