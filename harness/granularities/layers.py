"""Whole transformer blocks: scores ``[layers]``; pruning removes the blocks (the residual stream skips them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.records import Granularity

if TYPE_CHECKING:
    import torch
    from torch import nn


def shapes(model: nn.Module, targets: tuple[str, ...]) -> tuple[int]:
    from harness import surgery

    return (surgery.num_layers(model),)


def config_shapes(config: Any) -> tuple[int] | None:
    """From the config's layer count (``num_hidden_layers``; GPT-2's ``n_layer``)."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    return (int(layers),) if layers else None


def apply(model: nn.Module, keep: torch.Tensor) -> nn.Module:
    from harness import surgery

    return surgery.remove_layers(model, keep.bool())


def mask(model: nn.Module, keep: torch.Tensor) -> Any:
    from harness import surgery

    return surgery.mask_layers(model, keep.bool())


def scope(model: nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    """Every block's linear weights (attention and FFN), by their names in the dense model.

    After removal the blocks are renumbered, so a pruned model has the names of
    its first blocks and lacks the last ones: ``surgery.count_nonzero`` counts the
    names it lacks as removed. That equals counting the removed blocks only when
    every block has the same size, which holds unless heads or neurons were
    removed unevenly before the layers were.
    """
    from harness import surgery

    return surgery.target_modules(model, "linear")


LAYER = Granularity(
    "layer", shapes, apply, scope, description="whole transformer blocks (removed; the residual stream skips them)",
    mask=mask, config_shapes=config_shapes,
)
