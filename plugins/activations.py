"""Pruner ``teal`` (Liu et al. 2024, TEAL): magnitude thresholds on each FFN's hidden activation, at run time.

Training-free activation sparsity: for a target sparsity s, layer l's threshold
t_l is the s-quantile of |h| over the calibration tokens (padding excluded) of
its FFN hidden activation h, the down projection's input; at inference, entries
with |h| < t_l are zeroed by a forward pre-hook. Thresholds come from one pass
over the model as it is (TEAL calibrates on dense activations).

What differs from the paper: only the FFN hidden activation is sparsified (TEAL
also thresholds the inputs of q/k/v/o and of the up projections), and every
layer gets the same target (TEAL's greedy per-layer allocation is not
implemented). No weight changes and nothing is removed, so a row's speed is the
dense kernel's (the harness adds ``latency_kernel``, as for unstructured zeros;
TEAL's speedups need its sparse GEMV kernel), and its ``gflops`` is the dense
model's. The row's achieved sparsity is measured on the validation data (the
``activation`` granularity); each layer's threshold is logged to ``extras``.

The pruner ignores scores (``uses_scores=False``) and installs the thresholds
in its own model copy (``updates_model=True``; the harness measures whether a
kept weight moved, so its rows say ``updates_weights=False``). Its keep-mask says which layers
stay dense: all ``True`` at sparsity 0, all ``False`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import Options, Pruner, PruneRequest, hookimpl, option

if TYPE_CHECKING:
    import torch

DESCRIPTION = ("TEAL: per-layer magnitude threshold on each FFN's hidden activation (the sparsity-quantile of |h| on "
               "calibration tokens), zeroed at run time; uniform across layers; weights untouched (dense kernel)")


@dataclass(frozen=True)
class TealOptions(Options):
    """Options of ``teal``."""

    max_values: int = option(1 << 22, low=1, help="|h| values per layer a threshold is the quantile of (a seeded "
                             "uniform sample beyond that)")


def compute_mask(request: PruneRequest) -> torch.Tensor:
    """Calibrate and install every layer's threshold in ``request.model``; the mask: no layer stays dense."""
    import torch

    from harness import surgery

    layers = len(request.scores)
    if request.sparsity == 0 or request.model is None:  # nothing to threshold, or a dry run on shapes
        return torch.full((layers,), request.sparsity == 0, dtype=torch.bool)
    if not request.batches:
        raise ValueError("teal needs calibration batches (PruneRequest.batches)")
    options = TealOptions.of(request.options)
    thresholds = surgery.calibrate_activation_thresholds(request.model, request.batches, request.sparsity,
                                                         options.max_values, request.seed)
    if len(thresholds) != layers:
        raise ValueError(f"teal: {layers} scores for a model of {len(thresholds)} FFN layers")
    surgery.set_activation_thresholds(request.model, thresholds)
    for layer, threshold in enumerate(thresholds):
        request.log(f"teal/threshold_{layer}", threshold, 0)
    return torch.zeros(layers, dtype=torch.bool)


@hookimpl
def harness_pruners() -> list[Pruner]:
    return [Pruner("teal", "activation", compute_mask, DESCRIPTION, TealOptions(), uses_scores=False,
                   updates_model=True)]
