"""OWL (Yin et al. 2023): outlier-weighted layer-wise sparsity, as used by the ``unstructured`` pruner.

LLM layers differ in how many of their weights are outliers (importance far
above the layer's mean); pruning them all to the same sparsity hurts the
outlier-rich layers most. OWL gives each decoder/encoder layer its own ratio:

- D_l: the share of layer l's scores above ``m`` times the layer's mean score;
- d_l = (D_l - min D) / (max D - min D) in [0, 1] (all 0 when every D_l is equal);
- s_l = clip(c - 2 λ d_l, 0, cap): more outliers, lower sparsity; before
  clipping the ratios span exactly 2λ (λ = 0: uniform);
- c is chosen so the mean of s_l weighted by each layer's number of scored
  weights equals the requested sparsity exactly, so the zeros counted over the
  whole scope (the row's achieved sparsity) match the grid's sparsity up to
  per-module rounding. The reference code takes the plain mean over layers,
  which is the same thing when every layer has the same size.

Modules are grouped into layers by the first all-digit part of their dotted
name (``model.layers.3.mlp.up_proj`` -> 3), which every supported architecture has.
Pure functions of the scores: no torch module is touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch


def layer_of(name: str) -> int:
    """The layer index in a module's dotted name: its first part made of digits only."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    raise ValueError(f"OWL groups modules by layer, and module {name!r} has no layer index in its name")


def layers(scores: Mapping[str, torch.Tensor]) -> dict[int, list[str]]:
    """Module names by layer index, layers in increasing order."""
    found: dict[int, list[str]] = {}
    for name in scores:
        found.setdefault(layer_of(name), []).append(name)
    return dict(sorted(found.items()))


def outlier_ratios(scores: Mapping[str, torch.Tensor], m: float) -> dict[int, float]:
    """D_l per layer: the fraction of the layer's scores above ``m`` times their mean (all its modules together)."""
    import torch

    ratios = {}
    for index, names in layers(scores).items():
        total = sum(int(scores[name].numel()) for name in names)
        mean = sum(float(scores[name].sum(dtype=torch.float64)) for name in names) / total
        above = sum(int((scores[name] > m * mean).sum()) for name in names)
        ratios[index] = above / total
    return ratios


def _shift(base: list[float], weights: list[float], target: float, cap: float) -> float:
    """The c with Σ w_l clip(c - base_l, 0, cap) = target · Σ w_l (piecewise linear in c: exact on its segment)."""
    total = sum(weights)

    def removed(c: float) -> float:
        return sum(w * min(max(c - b, 0.0), cap) for b, w in zip(base, weights))

    points = sorted({*base, *(b + cap for b in base)})
    goal = target * total
    if goal > removed(points[-1]) * (1 + 1e-12):
        raise ValueError(f"sparsity {target:g} is above the {cap:g} OWL lets any layer reach")
    previous = points[0]
    for point in points:
        if removed(point) >= goal:
            if point == previous:
                return point
            low, high = removed(previous), removed(point)
            return previous + (goal - low) * (point - previous) / (high - low)
        previous = point
    return points[-1]


def layer_sparsities(scores: Mapping[str, torch.Tensor], sparsity: float, m: float, spread: float,
                     cap: float) -> dict[int, float]:
    """s_l per layer index, in [0, cap], their mean weighted by scored weights per layer exactly ``sparsity``."""
    ratios = outlier_ratios(scores, m)
    low, high = min(ratios.values()), max(ratios.values())
    normalized = [(d - low) / (high - low) if high > low else 0.0 for d in ratios.values()]
    base = [2.0 * spread * d for d in normalized]
    weights = [float(sum(int(scores[n].numel()) for n in names)) for names in layers(scores).values()]
    c = _shift(base, weights, sparsity, cap)
    return {index: min(max(c - b, 0.0), cap) for index, b in zip(ratios, base)}


def weighted_mean(sparsities: Mapping[int, float], scores: Mapping[str, torch.Tensor]) -> float:
    """Mean of per-layer sparsities weighted by each layer's number of scored weights (what OWL holds fixed)."""
    sizes = {index: sum(int(scores[n].numel()) for n in names) for index, names in layers(scores).items()}
    return sum(sparsities[index] * size for index, size in sizes.items()) / sum(sizes.values())
