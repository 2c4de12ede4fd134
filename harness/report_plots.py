"""What a report draws, decided once, and its PNGs (matplotlib, Agg); :mod:`harness.site_svg` draws the same plan.

A figure is one (model, task, adapter, metric), faceted into one panel per
granularity (heads, neurons, weights, layers, activations, then any other);
the dense model is drawn in every panel. A method's colour says its scorer,
its line style and marker its pruner, so 21 methods never share a look and
one scorer looks the same in every panel and figure; random baselines are grey.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness import leaderboard
from harness.records import lower_is_better

# tab10 without its grey, then Dark2 and tab20's light half: 25 colours a reader tells apart, none of them grey
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
           "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
           "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5")
GREYS = ("#7f7f7f", "#4d4d4d", "#a6a6a6", "#333333", "#bfbfbf")
DASHES: tuple[tuple[float, ...], ...] = ((), (6, 3), (6, 2, 2, 2), (1.5, 2), (10, 3), (3, 1, 1, 1, 1, 1),
                                         (8, 2, 2, 2, 2, 2), (1, 4))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
FILLS = ("full", "none", "left", "bottom", "right", "top")
FACET_ORDER = ("head", "neuron", "weight", "layer", "activation")
FACET_TITLES = {"head": "heads", "neuron": "neurons", "weight": "weights", "layer": "layers",
                "activation": "activations"}


@dataclass(frozen=True)
class Style:
    """How one method looks, in the PNGs and in the HTML's SVG alike."""

    color: str
    dash: tuple[float, ...]
    marker: str
    fill: str
    random: bool = False

    def matplotlib(self) -> dict[str, Any]:
        return {"color": self.color, "linestyle": (0, self.dash) if self.dash else "-", "marker": self.marker,
                "fillstyle": self.fill}


@dataclass
class Series:
    method: str
    style: Style
    x: list[float]
    y: list[float]
    yerr: list[float]
    xerr: list[float]
    tips: list[str]
    front: list[bool]


@dataclass
class Facet:
    key: str
    title: str
    series: list[Series] = field(default_factory=list)


@dataclass
class View:
    """One figure: the metric against sparsity or against measured speedup, one facet per granularity."""

    kind: str
    xlabel: str
    ylabel: str
    facets: list[Facet]
    xlim: tuple[float, float]
    xticks: list[float] | None
    ylog: bool
    dense: tuple[float, float, float, str] | None  # mean, sd, speedup, tooltip
    chance: float | None
    front: list[tuple[float, float]] = field(default_factory=list)


def is_dense(frame: Any) -> Any:
    return (frame["scorer"] == "none") & (frame["pruner"] == "none")


def is_random(scorer: str, pruner: str) -> bool:
    """A random baseline: a random scorer (``random``, ``random-layer``, ...), or a pruner that draws at random."""
    return str(scorer).startswith("random") or (str(scorer) in ("", "none") and str(pruner).startswith("random"))


def method_labels(frame: Any) -> Any:
    """One curve per scorer/pruner, its changed options, its schedule unless one shot, and whether the row is
    after recovery; the dense row is ``dense``."""
    label = frame["scorer"].astype(str) + "/" + frame["pruner"].astype(str)
    for column, prefix in (("options", " "), ("schedule", " "), ("recovery", " + recovery ")):
        if column in frame:
            value = leaderboard.text_column(frame[column])
            if column == "schedule":
                value = value.where(value != "one-shot", "")
            label = label.where(value == "", label + prefix + value)
    return label.where(~is_dense(frame), "dense")


def colour(index: int) -> str:
    """The palette, then evenly spread hues (golden-ratio steps) for the 26th scorer on."""
    if index < len(PALETTE):
        return PALETTE[index]
    from matplotlib.colors import hsv_to_rgb, to_hex

    return to_hex(hsv_to_rgb(((index * 0.618034) % 1.0, 0.7, 0.8)))


def method_styles(frame: Any) -> dict[str, Style]:
    """Per method of ``frame`` (columns scorer, pruner, method): one colour per scorer (the pruner where the
    scorer is ``none``), one dash and marker per pruner, one marker fill per variant (options, schedule,
    recovery) of the same pair; random baselines in greys. Assigned in sorted order over the whole report, so a
    scorer keeps its colour across facets and figures."""
    pruned = frame[~is_dense(frame)][["scorer", "pruner", "method"]].astype(str).drop_duplicates()
    keys = pruned["scorer"].where(~pruned["scorer"].isin(["", "none"]), pruned["pruner"])
    randoms = [is_random(s, p) for s, p in zip(pruned["scorer"], pruned["pruner"])]
    real = sorted(set(keys[[not r for r in randoms]]))
    grey = sorted(set(keys[randoms]))
    pruners = sorted(set(pruned["pruner"]))
    styles = {}
    for (scorer, pruner), rows in pruned.groupby(["scorer", "pruner"], sort=True):
        key, random = (scorer if scorer not in ("", "none") else pruner), is_random(scorer, pruner)
        color = GREYS[grey.index(key) % len(GREYS)] if random else colour(real.index(key))
        turn = pruners.index(pruner)
        for variant, method in enumerate(sorted(rows["method"])):
            styles[method] = Style(shade(color, variant), DASHES[turn % len(DASHES)], MARKERS[turn % len(MARKERS)],
                                   FILLS[variant % len(FILLS)], random)
    return styles


SHADES = (0.0, -0.4, 0.45, -0.65, 0.7, -0.2, 0.25)


def shade(color: str, variant: int) -> str:
    """The scorer's colour for the first variant of a pair; darker or lighter (same hue) for the next ones
    (iterative schedules, options, recovery), which also get their own marker fill."""
    from matplotlib.colors import to_hex, to_rgb

    amount = SHADES[variant % len(SHADES)]
    target = 1.0 if amount > 0 else 0.0
    return to_hex(tuple(c + abs(amount) * (target - c) for c in to_rgb(color)))


def facet_key(granularity: str, pruner: str) -> str:
    """The granularity; a leaderboard written before that column existed facets by pruner instead."""
    return granularity if granularity not in ("", "none", "nan") else pruner


def facet_order(keys: Sequence[str]) -> list[str]:
    known = [k for k in FACET_ORDER if k in keys]
    return known + sorted(set(keys) - set(known))


def pareto_front(speedup: Sequence[float], score: Sequence[float], lower: bool = False) -> list[bool]:
    """Whether each point is on the Pareto frontier: no other point is at least as fast and at least as good,
    and strictly better in one (better: higher, or lower where ``lower``). NaN points are never on it."""
    import numpy as np

    x = np.asarray(speedup, dtype=float)
    y = -np.asarray(score, dtype=float) if lower else np.asarray(score, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    xs, ys = x[ok][None, :], y[ok][None, :]
    dominated = ((xs >= x[:, None]) & (ys >= y[:, None]) & ((xs > x[:, None]) | (ys > y[:, None]))).any(axis=1)
    return [bool(v) for v in ok & ~dominated]


def sparsity_axis(sparsities: Sequence[float]) -> tuple[tuple[float, float], list[float] | None]:
    """Limits and ticks: ±0.1 around a single sparsity (never matplotlib's 0.48..0.52), ticks at the sparsities."""
    values = sorted({float(s) for s in sparsities})
    if not values:
        return (0.0, 1.0), None
    spread = values[-1] - values[0]
    gap = min((b - a for a, b in zip(values, values[1:])), default=0.4)
    pad = max(0.05, 0.25 * gap, 0.08 * spread)  # room for the dodged curves (together 30% of a gap) at the ends
    limits = (max(values[0] - pad, -0.02), min(values[-1] + pad, 1.02))
    return limits, values if len(values) <= 12 else None


def dodge(methods: Sequence[str], sparsities: Sequence[float]) -> dict[str, float]:
    """A small horizontal offset per method (together 30% of the smallest gap between sparsities).

    Why: methods often tie (magnitude and Taylor keep the same heads at low
    sparsity; a baseline may equal a method), and a later curve would then
    cover an earlier one completely. Offsetting x by a fraction of a sparsity
    step keeps every marker and error bar visible and is read as the same
    sparsity; alpha alone leaves the covered curve hard to pick out. The
    speedup view is not dodged: its x is a measurement.
    """
    values = sorted({float(s) for s in sparsities})
    gaps = [b - a for a, b in zip(values, values[1:]) if b > a]
    width = 0.3 * (min(gaps) if gaps else 0.1)
    names = sorted(set(methods))
    if len(names) < 2:
        return dict.fromkeys(names, 0.0)
    step = width / (len(names) - 1)
    return {name: (i - (len(names) - 1) / 2) * step for i, name in enumerate(names)}


def _float(value: Any, default: float = 0.0) -> float:
    import math

    value = float(value) if value is not None else math.nan
    return default if math.isnan(value) else value


def _dense(group: Any) -> tuple[float, float, float, str] | None:
    dense = group[is_dense(group)]
    if dense.empty:
        return None
    row = dense.iloc[0]
    return (float(row["score_mean"]), _float(row["score_sd"]), _float(row.get("speedup_mean"), 1.0),
            str(row.get("tip", "dense")))


def _chance(group: Any) -> float | None:
    import pandas as pd

    if "chance" not in group:
        return None
    values = pd.to_numeric(group["chance"], errors="coerce").dropna()
    return float(values.iloc[0]) if len(values) else None


def _ylog(group: Any) -> bool:
    """Perplexities spread over decades (a randomly pruned LM: 10^7) are read on a log axis."""
    scores = group["score_mean"].astype(float)
    metric = str(group["metric"].iloc[0])
    return bool(lower_is_better(metric) and (scores > 0).all() and scores.max() / scores.min() > 20)


def axis_label(group: Any) -> str:
    metric = str(group["metric"].iloc[0])
    return f"{metric} (lower is better)" if lower_is_better(metric) else metric


def with_front(group: Any) -> Any:
    """``group`` with a ``pareto`` column: on the (speedup, score) frontier of this figure, dense model included."""
    lower = lower_is_better(str(group["metric"].iloc[0]))
    return group.assign(pareto=pareto_front(group["speedup_mean"], group["score_mean"], lower))


def plan(group: Any, kind: str, styles: dict[str, Style]) -> View:
    """What one figure shows; ``group`` has the aggregate's columns plus ``method``, ``tip`` and ``pareto``."""
    dense = is_dense(group)
    pruned = group[~dense].assign(facet=[facet_key(g, p) for g, p in zip(group.loc[~dense, "granularity"].astype(str),
                                                                           group.loc[~dense, "pruner"].astype(str))])
    sparsity = kind == "sparsity"
    facets = [Facet(key, FACET_TITLES.get(key, key)) for key in facet_order(list(pruned["facet"].unique()))] or \
        [Facet("dense", "dense")]
    for facet in facets:
        rows = pruned[pruned["facet"] == facet.key]
        offsets = dodge(rows["method"], rows["sparsity"]) if sparsity else {}
        for method, curve in rows.groupby("method", sort=True):
            curve = curve.sort_values("sparsity")
            x = curve["sparsity"] + offsets[method] if sparsity else curve["speedup_mean"]
            facet.series.append(Series(
                str(method), styles[str(method)], [float(v) for v in x], [float(v) for v in curve["score_mean"]],
                [_float(v) for v in curve["score_sd"]], [0.0 if sparsity else _float(v) for v in curve["speedup_sd"]],
                [str(t) for t in curve["tip"]], [bool(v) and not sparsity for v in curve["pareto"]]))
    if sparsity:
        xlim, xticks = sparsity_axis(pruned["sparsity"])
        xlabel = "sparsity (fraction removed)"
    else:
        xlim, xticks, xlabel = _speedup_axis(group["speedup_mean"]), None, "measured speedup over dense (×)"
    front = group[group["pareto"]].sort_values("speedup_mean")
    points = [] if sparsity else [(float(x), float(y)) for x, y in zip(front["speedup_mean"], front["score_mean"])]
    return View(kind, xlabel, axis_label(group), facets, xlim, xticks, _ylog(group), _dense(group), _chance(group),
                points)


def _speedup_axis(speedups: Any) -> tuple[float, float]:
    values = [float(v) for v in speedups.dropna()] + [1.0]
    low, high = min(values), max(values)
    pad = max(0.05, 0.08 * (high - low))
    return low - pad, high + pad


def error_bars(series: Series, ylog: bool) -> tuple[list[float], list[float]]:
    """Below and above each mean: on a log axis the lower bar stops at a tenth of the mean (a perplexity's sd
    can exceed its mean, and a bar to zero or below has no place on a log axis)."""
    below = [min(e, 0.9 * y) if ylog and y > 0 else e for y, e in zip(series.y, series.yerr)]
    return below, list(series.yerr)


def draw(view: View, title: str) -> Any:
    """The matplotlib figure of ``view`` (not closed: :func:`save` writes and closes it; tests look inside)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    n = len(view.facets)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n + 0.8, 4.0), dpi=100, sharex=True, sharey=True, squeeze=False)
    for ax, facet in zip(axes[0], view.facets):
        for series in facet.series:
            ax.errorbar(series.x, series.y, yerr=error_bars(series, view.ylog), xerr=series.xerr if any(series.xerr) else None,
                        label=series.method, capsize=2, markersize=5, linewidth=1.4, alpha=0.85,
                        **series.style.matplotlib())
        _references(ax, view, facet)
        ax.set_title(facet.title, fontsize=10)
        ax.set_xlabel(view.xlabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    ax = axes[0][0]
    ax.set_xlim(*view.xlim)
    if view.xticks is not None:
        ax.set_xticks(view.xticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))  # 0.167, not 0.1667
    if view.ylog:
        ax.set_yscale("log")
    ax.set_ylabel(view.ylabel)
    fig.suptitle(title, fontsize=11)
    _legend(fig, axes[0])
    return fig


def _references(ax: Any, view: View, facet: Facet) -> None:
    """The dense model (black dashed, ±sd band), chance (red dotted), and in the speedup view the frontier."""
    if view.dense is not None:
        mean, sd, speedup, _ = view.dense
        ax.axhline(mean, color="black", linestyle="--", linewidth=1.0, label="dense")
        if sd:
            ax.axhspan(max(mean - sd, 0.1 * mean) if view.ylog else mean - sd, mean + sd, color="black", alpha=0.08,
                       linewidth=0)
        if view.kind == "speedup":
            ax.plot([speedup], [mean], marker="s", color="black", linestyle="none", markersize=5)
    if view.chance is not None:
        ax.axhline(view.chance, color="red", linestyle=":", linewidth=1.2, label="chance")
        ax.text(0.99, view.chance, "chance", color="red", fontsize=7, ha="right", va="bottom",
                transform=ax.get_yaxis_transform())
    if view.kind == "speedup" and view.front:
        xs, ys = zip(*view.front)
        ax.step(xs, ys, where="pre", color="black", linewidth=0.8, alpha=0.5, label="Pareto frontier")
        facet_points = [(x, y) for s in facet.series for x, y, f in zip(s.x, s.y, s.front) if f]
        if view.dense is not None and (view.dense[2], view.dense[0]) in view.front:
            facet_points.append((view.dense[2], view.dense[0]))
        if facet_points:
            fx, fy = zip(*facet_points)
            ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="black", linewidths=1.0, zorder=5,
                       label="on the frontier")


def _legend(fig: Any, axes: Sequence[Any]) -> None:
    """One legend for the figure, beside the facets: every method once, then the reference lines."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    references = [k for k in ("dense", "chance", "Pareto frontier", "on the frontier") if k in seen]
    labels = [k for k in seen if k not in references] + references
    fig.legend([seen[k] for k in labels], labels, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=7,
               frameon=False, ncol=2 if len(labels) > 30 else 1)
    fig.tight_layout()


def save(view: View, path: Path, title: str) -> None:
    """Write ``view`` as a PNG (legend included: the figure grows to fit it)."""
    import matplotlib.pyplot as plt

    fig = draw(view, title)
    try:
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
