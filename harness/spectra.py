"""Singular-value spectra and effective ranks of learned weight updates ΔW.

An adapter may return, per module, the update it learned (``TrainResult.updates``,
e.g. ``scale · B · A`` of a LoRA module). How many directions an update really
uses says whether its rank budget was needed, and whether q, k and v adapt
differently; this module turns the updates into tidy tables, ranks and a plot.

What each module is ("q", ..., "ffn_out") is not guessed from its name here: the
caller passes ``kinds`` (module name -> group), normally
``harness.surgery.module_groups(model)``, the one per-architecture table that
adapters also target with; modules missing from ``kinds`` are kind ``"other"``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from harness import atomic
from harness.surgery import GROUPS

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from matplotlib.axes import Axes

KINDS = GROUPS  # harness.surgery's weight groups, in table and panel order
OTHER = "other"  # the kind of a module missing from ``kinds``
_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
ENERGY = 0.90
SPECTRUM_COLUMNS = ("module", "layer", "kind", "index", "singular_value", "normalised")
SUMMARY_COLUMNS = (
    "module", "layer", "kind", "rows", "cols", "sigma_max", "frobenius", "effective_rank_entropy", "energy90_rank",
)


def layer_index(name: str) -> int:
    """The first integer component of a dotted name (the transformer layer), or -1."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else -1


def singular_values(delta: torch.Tensor) -> torch.Tensor:
    """Singular values of one update, descending, computed in float64 (small ones matter for the ranks)."""
    import torch

    return torch.linalg.svdvals(delta.detach().to(device="cpu", dtype=torch.float64))


def entropy_rank(sigma: torch.Tensor) -> float:
    """Roy & Vetterli (2007) effective rank: exp(H(p)) with p_i = σ_i / Σσ; 0 for a zero update."""
    sigma = sigma.double()
    total = float(sigma.sum())
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def energy_rank(sigma: torch.Tensor, fraction: float = ENERGY) -> int:
    """Smallest k with Σ_{i≤k} σ_i² ≥ fraction · Σ σ_i² (σ descending); 0 for a zero update."""
    import torch

    energy = sigma.double() ** 2
    total = float(energy.sum())
    if total <= 0:
        return 0
    cumulative = torch.cumsum(energy, 0)
    return int((cumulative < fraction * total).sum()) + 1


def _ordered(updates: Mapping[str, torch.Tensor], kinds: Mapping[str, str]) -> list[str]:
    """Module names by layer, then kind order, then name: stable tables and legends."""
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(updates, key=lambda n: (layer_index(n), order.get(_kind(n, kinds), len(KINDS)), n))


def _kind(name: str, kinds: Mapping[str, str]) -> str:
    return kinds.get(name, OTHER)


def spectra(updates: Mapping[str, torch.Tensor], kinds: Mapping[str, str]) -> pd.DataFrame:
    """One row per singular value of every update (``index`` from 1), with σ/σ_max in ``normalised``.

    ``kinds`` maps module names to groups (``harness.surgery.module_groups(model)``).
    """
    import pandas as pd

    rows = []
    for name in _ordered(updates, kinds):
        sigma = singular_values(updates[name])
        top = float(sigma[0]) if len(sigma) and float(sigma[0]) > 0 else 1.0
        layer, kind = layer_index(name), _kind(name, kinds)
        for i, value in enumerate(sigma.tolist(), start=1):
            rows.append((name, layer, kind, i, value, value / top))
    return pd.DataFrame(rows, columns=list(SPECTRUM_COLUMNS))


def summary(updates: Mapping[str, torch.Tensor], kinds: Mapping[str, str]) -> pd.DataFrame:
    """One row per module: shape, largest singular value, Frobenius norm and both effective ranks.

    ``kinds`` maps module names to groups (``harness.surgery.module_groups(model)``).
    """
    import pandas as pd

    rows = []
    for name in _ordered(updates, kinds):
        delta = updates[name]
        sigma = singular_values(delta)
        rows.append((
            name, layer_index(name), _kind(name, kinds), int(delta.shape[0]), int(delta.shape[-1]),
            float(sigma[0]) if len(sigma) else 0.0, float(sigma.square().sum().sqrt()),
            entropy_rank(sigma), energy_rank(sigma),
        ))
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def median_ranks(table: pd.DataFrame, column: str = "effective_rank_entropy", prefix: str = "erank") -> dict[str, float]:
    """Median over layers of one rank column per kind, e.g. ``{"erank_q": 3.1, ...}``: leaderboard-sized."""
    result: dict[str, float] = {}
    present = set(table["kind"]) if len(table) else set()
    for kind in [*KINDS, OTHER]:
        if kind in present:
            result[f"{prefix}_{kind}"] = float(table.loc[table["kind"] == kind, column].median())
    return result


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically (temporary file in the same folder, then ``os.replace``): never a half-written file."""
    return atomic.write(Path(path), lambda temporary: table.to_csv(temporary, index=False))


def plot(table: pd.DataFrame, path: str | Path, floor: float = 1e-6) -> Path:
    """A PNG with one panel per kind: normalised spectra on a log scale, one curve per layer.

    Values below ``floor`` (σ/σ_max) are numerical zeros of a low-rank update and are not drawn.
    Written atomically like :func:`write_csv`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in [*KINDS, OTHER] if k in set(table["kind"])] or [OTHER]
    figure, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.2), squeeze=False, sharey=True)
    try:
        for axis, kind in zip(axes[0], kinds):
            _panel(axis, table[table["kind"] == kind], kind, floor)
        axes[0][0].set_ylabel("σ / σ_max")
        figure.tight_layout()
        path = atomic.write(Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    finally:
        plt.close(figure)
    return path


def _panel(axis: Axes, rows: pd.DataFrame, kind: str, floor: float) -> None:
    """One kind's curves, one per module (layer), in layer order."""
    per_layer = rows.drop_duplicates("module")["layer"].value_counts()
    for module, curve in rows.groupby("module", sort=False):
        layer = int(curve["layer"].iloc[0])
        label = f"layer {layer}" if layer >= 0 else module
        if layer >= 0 and per_layer[layer] > 1:  # several modules of one kind in a layer (LLaMA's gate and up)
            label += " " + module.rsplit(".", 1)[-1]
        curve = curve[curve["normalised"] > floor]
        axis.plot(curve["index"], curve["normalised"], marker=".", label=label)
    axis.set_yscale("log")
    axis.set_title(kind)
    axis.set_xlabel("index")
    if len(rows):
        axis.legend(fontsize="x-small")
