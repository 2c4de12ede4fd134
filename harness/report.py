"""``harness report OUT``: Markdown and self-contained HTML leaderboards, and PNG plots, from a leaderboard CSV.

People look rather than read: per (model, task, adapter, metric) one plot of the metric
against sparsity (mean ± sd over seeds, one curve per method, the dense model
as a line) and one of the metric against measured speedup (the Pareto view).
The HTML embeds the plots, so the one file can be mailed or published.
"""

from __future__ import annotations

import base64
import html
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from harness import atomic, leaderboard, provenance
from harness.errors import UsageError
from harness.records import LOWER_IS_BETTER

TABLE_COLUMNS = ("scorer", "pruner", "options", "recovery", "schedule", "sparsity", "achieved_sparsity", "score_mean", "score_sd", "seeds",
                 "speedup_mean", "params", "gflops", "flagged")


def _method(frame: Any) -> Any:
    """One curve per scorer/pruner, its changed options, its schedule unless one shot, and whether the row is
    after recovery."""
    label = frame["scorer"].astype(str) + "/" + frame["pruner"].astype(str)
    for column, prefix in (("options", " "), ("schedule", " "), ("recovery", " + recovery ")):
        if column in frame:
            value = leaderboard.text_column(frame[column])
            if column == "schedule":
                value = value.where(value != "one-shot", "")
            label = label.where(value == "", label + prefix + value)
    return label


def _axis_label(group: Any) -> str:
    metric = str(group["metric"].iloc[0])
    return f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric


def _slug(*parts: str) -> str:
    return "-".join("".join(c if c.isalnum() else "_" for c in str(p)) for p in parts)


@contextmanager
def _figure(group: Any, path: Path, title: str, xlabel: str) -> Iterator[Any]:
    """An Agg figure for one (model, task, adapter, metric): yields the axes, then labels, saves and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_axis_label(group))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        _legend(fig, ax)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")


def method_styles(methods: Any) -> dict[str, dict[str, str]]:
    """Colour, marker and line style per method: the colour cycle has ten entries, so a grid of every built-in
    method (21 curves) would repeat colours; the marker and line style change with each pass through the cycle."""
    styles = {}
    for i, method in enumerate(sorted(set(methods))):
        turn = i // 10
        styles[method] = {"color": f"C{i % 10}", "marker": MARKERS[turn % len(MARKERS)],
                          "linestyle": LINESTYLES[turn % len(LINESTYLES)]}
    return styles


def _legend(fig: Any, ax: Any) -> None:
    """Beside the axes once there are more than ten curves, where it would otherwise cover the data."""
    if len(ax.get_legend_handles_labels()[1]) <= 11:
        ax.legend(fontsize=7, ncol=2)
        return
    fig.set_size_inches(11, 5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _split(group: Any) -> tuple[Any, Any]:
    """The dense row and the pruned rows, the latter with a ``method`` column."""
    dense = group[(group["scorer"] == "none") & (group["pruner"] == "none")]
    pruned = group.drop(dense.index)
    return dense, pruned.assign(method=_method(pruned))


def plot_sparsity(group: Any, path: Path, title: str) -> None:
    """Metric vs sparsity with error bars over seeds; dense as a horizontal line with its band."""
    dense, pruned = _split(group)
    styles = method_styles(pruned["method"])
    with _figure(group, path, title, "sparsity (fraction removed)") as ax:
        for method, rows in pruned.groupby("method", sort=True):
            rows = rows.sort_values("sparsity")
            ax.errorbar(rows["sparsity"], rows["score_mean"], yerr=rows["score_sd"].fillna(0), capsize=3, label=method,
                        **styles[method])
        if not dense.empty:
            mean, sd = float(dense["score_mean"].iloc[0]), float(dense["score_sd"].fillna(0).iloc[0])
            ax.axhline(mean, color="black", linestyle="--", label="dense")
            ax.axhspan(mean - sd, mean + sd, color="black", alpha=0.08)


def plot_speedup(group: Any, path: Path, title: str) -> None:
    """Metric vs measured speedup, every (method, sparsity) a point: right, and up (down for perplexity), is better."""
    dense, pruned = _split(group)
    with _figure(group, path, title, "measured speedup over dense (x)") as ax:
        if not dense.empty:
            ax.errorbar([1.0], dense["score_mean"], yerr=dense["score_sd"].fillna(0), marker="s", color="black",
                        capsize=3, linestyle="none", label="dense")
        styles = method_styles(pruned["method"])
        for method, rows in pruned.groupby("method", sort=True):
            rows = rows.sort_values("speedup_mean")
            ax.errorbar(rows["speedup_mean"], rows["score_mean"], xerr=rows["speedup_sd"].fillna(0),
                        yerr=rows["score_sd"].fillna(0), capsize=3, label=method, **styles[method])
        ax.axvline(1.0, color="grey", linewidth=0.8)


def _markdown_table(frame: Any) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    for _, row in frame.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sections(table: Any, folder: Path) -> list[tuple[str, Any, list[Path]]]:
    """Per (model, task, adapter, metric): its title, its table and its two plots (a plot never mixes metrics).

    A task with one metric keeps the names it always had; the metric joins the
    title and the file names only where a task reports several (lm-eval).
    """
    sections = []
    keys = ["model", "task", "adapter", "metric"]
    metrics = table.groupby(keys[:3], sort=True)["metric"].nunique()
    for (model, task, adapter, metric), group in table.groupby(keys, sort=True):
        several = metrics[(model, task, adapter)] > 1
        title = f"{model} × {task} ({adapter})" + (f", {metric}" if several else "")
        stem = _slug(model.split("/")[-1], task, adapter, *([metric] if several else []))
        plots = [folder / f"{stem}-sparsity.png", folder / f"{stem}-speedup.png"]
        plot_sparsity(group, plots[0], title)
        plot_speedup(group, plots[1], title)
        columns = [c for c in TABLE_COLUMNS if c in group.columns]
        sections.append((title, group[columns].sort_values(["sparsity", "scorer", "pruner"]), plots))
    return sections


def build(out: Path, folder: Path | None = None) -> Path:
    """Write ``report.md``, ``report.html`` and the PNGs into ``folder`` (default ``OUT/report``)."""
    source = Path(out) / "leaderboard.csv"
    if not source.exists():
        raise UsageError(f"{source} does not exist: run 'harness bench --out {out}' first")
    table = leaderboard.aggregate(leaderboard.read(source))
    if table.empty:
        raise UsageError(f"{source} has no successful rows to report")
    folder = Path(folder or Path(out) / "report")
    folder.mkdir(parents=True, exist_ok=True)
    sections = _sections(table, folder)
    intro = "Mean ± sd over seeds of every (method, sparsity); speedup is measured, never derived."
    regenerate = provenance.header(Path(out))
    md = ["# Leaderboard", "", intro, "", *regenerate]
    page = ["<!doctype html><meta charset='utf-8'><title>Leaderboard</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
            "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
            f"<h1>Leaderboard</h1><p>{html.escape(intro)}</p>",
            *[f"<pre>{html.escape(line)}</pre>" for line in regenerate if line and not line.startswith("```")]]
    for title, frame, plots in sections:
        md += [f"## {title}", "", *[f"![{p.stem}]({p.name})" for p in plots], "", _markdown_table(frame), ""]
        images = "".join(
            f"<img alt='{html.escape(p.stem)}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
            for p in plots
        )
        page += [f"<h2>{html.escape(title)}</h2>", images, frame.to_html(index=False, float_format=lambda v: f"{v:.4g}")]
    atomic.write_text(folder / "report.md", "\n".join(md))
    atomic.write_text(folder / "report.html", "\n".join(page))
    return folder
