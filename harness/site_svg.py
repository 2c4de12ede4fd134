"""The report's figures as inline SVG, one ``<svg>`` per facet: the plan the PNGs draw (:mod:`harness.report_plots`),
drawn so the page's script can name a point on hover (``data-tip``) and dim the methods a filter leaves out
(``data-method``). No plotting library in the browser and nothing fetched: the page stays one file."""

from __future__ import annotations

import html
import math
from typing import Sequence

from harness.report_plots import Facet, Series, Style, View, error_bars

WIDTH, HEIGHT = 330, 250
LEFT, RIGHT, TOP, BOTTOM = 56, 10, 26, 40
SHAPES: dict[str, Sequence[tuple[float, float]]] = {
    "s": ((-1, -1), (1, -1), (1, 1), (-1, 1)),
    "^": ((0, -1.25), (1.15, 0.9), (-1.15, 0.9)),
    "v": ((0, 1.25), (1.15, -0.9), (-1.15, -0.9)),
    "D": ((0, -1.35), (1.1, 0), (0, 1.35), (-1.1, 0)),
    "P": ((-0.4, -1.2), (0.4, -1.2), (0.4, -0.4), (1.2, -0.4), (1.2, 0.4), (0.4, 0.4), (0.4, 1.2), (-0.4, 1.2),
          (-0.4, 0.4), (-1.2, 0.4), (-1.2, -0.4), (-0.4, -0.4)),
    "*": tuple((math.sin(i * math.pi / 5) * (1.35 if i % 2 == 0 else 0.55),
                -math.cos(i * math.pi / 5) * (1.35 if i % 2 == 0 else 0.55)) for i in range(10)),
}
SHAPES["X"] = tuple(((x - y) * 0.7071, (x + y) * 0.7071) for x, y in SHAPES["P"])


def attr(text: object) -> str:
    """An attribute value: escaped, newlines kept as character references."""
    return html.escape(str(text), quote=True).replace("\n", "&#10;")


def marker_path(marker: str, x: float, y: float, r: float = 4.0) -> str:
    """The SVG path of a matplotlib marker (circle for any this table does not know)."""
    if marker in SHAPES:
        points = " L".join(f"{x + dx * r:.1f},{y + dy * r:.1f}" for dx, dy in SHAPES[marker])
        return f"M{points} Z"
    return f"M{x - r:.1f},{y:.1f} a{r},{r} 0 1,0 {2 * r},0 a{r},{r} 0 1,0 {-2 * r},0 Z"


def dasharray(style: Style) -> str:
    return f' stroke-dasharray="{",".join(f"{d * 1.5:g}" for d in style.dash)}"' if style.dash else ""


class Scale:
    """Data to pixels, linear or log10."""

    def __init__(self, low: float, high: float, start: float, end: float, log: bool = False) -> None:
        self.log = log
        self.low, self.high = (math.log10(low), math.log10(high)) if log else (low, high)
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        value = math.log10(max(value, 1e-300)) if self.log else value
        span = (self.high - self.low) or 1.0
        return self.start + (value - self.low) / span * (self.end - self.start)

    def ticks(self) -> list[float]:
        from matplotlib.ticker import LogLocator, MaxNLocator

        low, high = (10 ** self.low, 10 ** self.high) if self.log else (self.low, self.high)
        values = (LogLocator(base=10, numticks=6) if self.log else MaxNLocator(nbins=5)).tick_values(low, high)
        inside = [float(v) for v in values if low - 1e-12 <= v <= high + 1e-12]
        if self.log and len(inside) < 2:
            inside = [float(v) for v in MaxNLocator(nbins=4).tick_values(low, high) if low <= v <= high and v > 0]
        return inside


def y_domain(view: View) -> tuple[float, float]:
    """Every mean ± sd, the dense band and chance, padded by 5%; positive only on a log axis."""
    values = [v for f in view.facets for s in f.series for y, b, a in zip(s.y, *error_bars(s, view.ylog))
              for v in (y - b, y + a)]
    if view.dense is not None:
        values += [view.dense[0] - view.dense[1], view.dense[0] + view.dense[1]]
    if view.chance is not None:
        values.append(view.chance)
    values = [v for v in values if math.isfinite(v) and (v > 0 or not view.ylog)]
    if not values:
        return (0.1, 1.0) if view.ylog else (0.0, 1.0)
    low, high = min(values), max(values)
    if view.ylog:
        return low / 1.3, high * 1.3
    pad = 0.05 * (high - low) or 0.05 * (abs(high) or 1.0)
    return low - pad, high + pad


def _axes(facet: Facet, view: View, x: Scale, y: Scale) -> list[str]:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    out = [f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" fill="#fff" stroke="#999"/>',
           f'<text class="facet" x="{(LEFT + right) / 2:.1f}" y="{TOP - 9}" text-anchor="middle">'
           f'{html.escape(facet.title)}</text>']
    for value in view.xticks if view.xticks is not None else x.ticks():
        px = x(value)
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{TOP}" y2="{bottom}" class="grid"/>'
                   f'<text x="{px:.1f}" y="{bottom + 13}" text-anchor="middle">{value:.3g}</text>')
    for value in y.ticks():
        py = y(value)
        out.append(f'<line x1="{LEFT}" x2="{right}" y1="{py:.1f}" y2="{py:.1f}" class="grid"/>'
                   f'<text x="{LEFT - 4}" y="{py + 3:.1f}" text-anchor="end">{value:.3g}</text>')
    out.append(f'<text x="{(LEFT + right) / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
               f'{html.escape(view.xlabel)}</text>')
    out.append(f'<text transform="translate(12,{(TOP + bottom) / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'{html.escape(view.ylabel)}</text>')
    return out


def _references(view: View, x: Scale, y: Scale) -> list[str]:
    """Dense (black dashed, its ±sd band; a square at its speedup), chance (red dotted), the Pareto frontier."""
    out, right = [], WIDTH - RIGHT
    if view.dense is not None:
        mean, sd, fast, tip = view.dense
        if sd:
            top, low = y(mean + sd), y(max(mean - sd, 0.1 * mean) if y.log else mean - sd)
            out.append(f'<rect x="{LEFT}" y="{top:.1f}" width="{right - LEFT}" height="{abs(low - top):.1f}" '
                       'fill="#000" fill-opacity="0.08"/>')
        out.append(f'<line class="dense" x1="{LEFT}" x2="{right}" y1="{y(mean):.1f}" y2="{y(mean):.1f}" '
                   'stroke="#000" stroke-dasharray="6,4"/>')
        if view.kind == "speedup":
            if (fast, mean) in view.front:
                out.append(f'<circle class="ring" cx="{x(fast):.1f}" cy="{y(mean):.1f}" r="7.5" fill="none" stroke="#000"/>')
            out.append(f'<path class="pt dense-pt" tabindex="0" data-method="dense" data-tip="{attr(tip)}" '
                       f'd="{marker_path("s", x(fast), y(mean))}" fill="#000"/>')
    if view.chance is not None:
        py = y(view.chance)
        out.append(f'<line class="chance" x1="{LEFT}" x2="{right}" y1="{py:.1f}" y2="{py:.1f}" stroke="red" '
                   f'stroke-dasharray="2,3" stroke-width="1.3"/><text x="{right - 3}" y="{py - 3:.1f}" '
                   'text-anchor="end" fill="red">chance</text>')
    if view.front:
        steps = [view.front[0]] + [p for a, b in zip(view.front, view.front[1:]) for p in ((a[0], b[1]), b)]
        points = " ".join(f"{x(px):.1f},{y(py):.1f}" for px, py in steps)
        out.append(f'<polyline class="frontier" points="{points}" fill="none" stroke="#000" stroke-opacity="0.5"/>')
    return out


def _finite(series: Series) -> Series:
    """The points a plot can place: a row without a measured speedup has no x in the speedup view."""
    keep = [i for i, (u, v) in enumerate(zip(series.x, series.y)) if math.isfinite(u) and math.isfinite(v)]
    pick = lambda values: [values[i] for i in keep]  # noqa: E731
    return Series(series.method, series.style, pick(series.x), pick(series.y), pick(series.yerr), pick(series.xerr),
                  pick(series.tips), pick(series.front))


def _series(series: Series, x: Scale, y: Scale) -> str:
    series = _finite(series)
    style = series.style
    fill = style.color if style.fill == "full" else "#fff"
    xs, ys = [x(v) for v in series.x], [y(v) for v in series.y]
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys))
    below, above = error_bars(series, y.log)
    bars = "".join(f"M{px:.1f},{y(v - b):.1f}V{y(v + a):.1f}" for px, v, b, a in zip(xs, series.y, below, above) if a)
    bars += "".join(f"M{x(u - e):.1f},{py:.1f}H{x(u + e):.1f}" for u, py, e in zip(series.x, ys, series.xerr) if e)
    parts = [f'<g class="series" data-method="{attr(series.method)}">',
             f'<polyline points="{line}" fill="none" stroke="{style.color}" stroke-width="1.6" '
             f'stroke-opacity="0.85"{dasharray(style)}/>']
    if bars:
        parts.append(f'<path d="{bars}" stroke="{style.color}" stroke-opacity="0.6"/>')
    for px, py, tip, front in zip(xs, ys, series.tips, series.front):
        if front:
            parts.append(f'<circle class="ring" cx="{px:.1f}" cy="{py:.1f}" r="7.5" fill="none" stroke="#000"/>')
        parts.append(f'<path class="pt" tabindex="0" data-tip="{attr(tip)}" d="{marker_path(style.marker, px, py)}" '
                     f'fill="{fill}" stroke="{style.color}" stroke-width="1.3"/>')
    return "".join(parts) + "</g>"


def view_svg(view: View, label: str) -> str:
    """One ``<svg>`` per facet of ``view``, sharing both axes, in a wrapping row."""
    low, high = y_domain(view)
    x = Scale(*view.xlim, LEFT, WIDTH - RIGHT)
    y = Scale(low, high, HEIGHT - BOTTOM, TOP, log=view.ylog)
    panels = []
    for facet in view.facets:
        body = [*_axes(facet, view, x, y), *_references(view, x, y), *(_series(s, x, y) for s in facet.series)]
        panels.append(f'<svg class="plot" data-view="{view.kind}" data-facet="{attr(facet.key)}" role="img" '
                      f'aria-label="{attr(label + ": " + facet.title)}" width="{WIDTH}" height="{HEIGHT}" '
                      f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>')
    return "".join(panels)


def key_svg(style: Style) -> str:
    """A legend swatch: the method's line and marker."""
    fill = style.color if style.fill == "full" else "#fff"
    return (f'<svg width="36" height="12" viewBox="0 0 36 12" aria-hidden="true"><line x1="1" x2="35" y1="6" y2="6" '
            f'stroke="{style.color}" stroke-width="1.6"{dasharray(style)}/><path d="{marker_path(style.marker, 18, 6)}" '
            f'fill="{fill}" stroke="{style.color}"/></svg>')
