"""Pruner ``layers``: remove the lowest-scoring whole transformer blocks (ShortGPT-style layer removal).

The number of blocks removed is ``round(sparsity × L)`` (Python's rounding: the
nearest whole block, halves to even), never so many that fewer than
``min_layers`` stay: such a budget is a ``UsageError`` before any work (the
harness dry-runs pruners on each model's config). Blocks are ranked by score,
ties by position (the earlier block goes first). The harness removes the blocks
physically, so the model really gets shallower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import Options, Pruner, PruneRequest, hookimpl, option
from harness.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LayerOptions(Options):
    """Options of ``layers``; the upper bound of ``min_layers`` is the model's (checked on the scores)."""

    min_layers: int = option(1, low=1, help="blocks the model keeps whatever the sparsity")


def layers_to_remove(count: int, sparsity: float, min_layers: int) -> int:
    """``round(sparsity × count)``, or a ``UsageError`` when fewer than ``min_layers`` blocks would stay."""
    if min_layers > count:
        raise UsageError(f"layers: min_layers={min_layers} is more than the model's {count} layers")
    remove = round(sparsity * count)
    if remove > count - min_layers:
        raise UsageError(
            f"layers: sparsity {sparsity:g} asks to remove {remove} of {count} layers, keeping {min_layers} "
            f"(min_layers) allows at most {count - min_layers} (sparsity <= {(count - min_layers) / count:g})"
        )
    return remove


def compute_mask(request: PruneRequest) -> torch.Tensor:
    import torch

    scores = request.scores
    if scores.dim() != 1:
        raise ValueError(f"layers: scores must be one per layer ([L]), not of shape {tuple(scores.shape)}")
    remove = layers_to_remove(len(scores), request.sparsity, LayerOptions.of(request.options).min_layers)
    keep = torch.ones(len(scores), dtype=torch.bool, device=scores.device)  # the indices below live there too
    keep[torch.sort(scores.float(), stable=True).indices[:remove]] = False
    return keep


@hookimpl
def harness_pruners() -> list[Pruner]:
    return [
        Pruner(
            name="layers",
            granularity="layer",
            compute_mask=compute_mask,
            description="remove the round(sparsity x L) lowest-scoring transformer blocks (min_layers stay)",
            options=LayerOptions(),
        )
    ]
