"""Pruner ``heads``: remove the least important fraction of attention heads.

``scope=global`` ranks all heads together (Michel et al.); ``scope=layer`` removes
the same fraction from every layer. ``min_heads_per_layer`` keeps layers alive.
The harness removes the masked heads physically, so speedups are real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import Pruner, PruneRequest, hookimpl

if TYPE_CHECKING:
    import torch

OPTIONS = {"scope": "global", "min_heads_per_layer": 1}


def _global(scores: torch.Tensor, remove: int, floor: int) -> torch.Tensor:
    import torch

    keep = torch.ones_like(scores, dtype=torch.bool)
    left = keep.sum(dim=1)
    order = torch.sort(scores.flatten(), stable=True).indices
    removed = 0
    for flat in order.tolist():
        if removed == remove:
            break
        layer, head = divmod(flat, scores.shape[1])
        if left[layer] > floor:
            keep[layer, head] = False
            left[layer] -= 1
            removed += 1
    return keep


def _per_layer(scores: torch.Tensor, sparsity: float, floor: int) -> torch.Tensor:
    import torch

    keep = torch.ones_like(scores, dtype=torch.bool)
    remove = round(sparsity * scores.shape[1])
    if remove > scores.shape[1] - floor:
        raise ValueError(
            f"heads: cannot remove {remove} of {scores.shape[1]} heads per layer keeping {floor} "
            f"(at most {scores.shape[1] - floor})"
        )
    for layer, row in enumerate(scores):
        keep[layer, torch.sort(row, stable=True).indices[:remove]] = False
    return keep


def compute_mask(request: PruneRequest) -> torch.Tensor:
    scores, sparsity = request.scores, request.sparsity
    scope = request.options.get("scope", "global")
    floor = int(request.options.get("min_heads_per_layer", 1))
    if scope not in ("global", "layer"):
        raise ValueError(f"heads: scope must be 'global' or 'layer', not {scope!r}")
    if not 1 <= floor <= scores.shape[1]:
        raise ValueError(f"heads: min_heads_per_layer must be in [1, {scores.shape[1]}]")
    if scope == "layer":
        return _per_layer(scores, sparsity, floor)
    remove = round(sparsity * scores.numel())
    possible = scores.numel() - floor * scores.shape[0]
    if remove > possible:
        raise ValueError(
            f"heads: cannot remove {remove} of {scores.numel()} heads keeping {floor} per layer (at most {possible})"
        )
    return _global(scores, remove, floor)


@hookimpl
def harness_pruners() -> list[Pruner]:
    return [
        Pruner(
            name="heads",
            granularity="head",
            compute_mask=compute_mask,
            description="remove the lowest-scoring heads, globally or per layer",
            options=OPTIONS,
            choices={"scope": ("global", "layer")},
        )
    ]
