"""FFN activations: one unit per layer, its FFN hidden activation, sparsified at run time by a magnitude threshold.

Nothing is removed and no weight changes: a pruner of this granularity (``teal``)
gets its own model copy (``updates_model``) and installs per-layer thresholds in it
(:func:`harness.surgery.set_activation_thresholds`). The keep-mask ``[layers]``
follows the harness's convention, ``True`` = kept: that layer's activation stays
dense, so ``apply`` drops the threshold of every layer the mask keeps, and
leaves those of the pruned (``False``) layers in place. Achieved sparsity is
measured, not counted: the share of exact zeros of the FFN hidden activations
over the evaluation data's real tokens, with the thresholds active.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from harness.granularities.layers import config_shapes
from harness.records import Granularity

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.records import Batch


def shapes(model: nn.Module, targets: tuple[str, ...]) -> tuple[int]:
    """One unit (one threshold) per FFN layer."""
    from harness import surgery

    return (len(surgery.down_projections(model)),)


def apply(model: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Layers the mask keeps run dense (their thresholds dropped); pruned layers keep what the pruner installed."""
    from harness import surgery

    keep = keep.bool()
    if tuple(keep.shape) != shapes(model, ()):
        raise ValueError(f"keep mask has shape {tuple(keep.shape)}, the model has {shapes(model, ())[0]} FFN layers")
    return surgery.remove_activation_thresholds(model, [int(i) for i in keep.nonzero().flatten()])


def scope(model: nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    """No weights: activation sparsity is measured on data (``achieved``), never counted in weights."""
    return ()


def achieved(model: nn.Module, batches: Sequence[Batch]) -> float:
    """Exact zeros of every layer's FFN hidden activation / all its entries, over the batches' real tokens."""
    from harness import surgery

    stats = surgery.ffn_activation_stats(model, batches, eps=0.0)
    values = sum(s.values for s in stats)
    return sum(s.zeros for s in stats) / values if values else float("nan")


ACTIVATION = Granularity(
    "activation", shapes, apply, scope,
    description="FFN hidden activations, zeroed at run time below a per-layer magnitude threshold (measured on data)",
    config_shapes=config_shapes, achieved=achieved,
)
