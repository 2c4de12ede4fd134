"""Attention heads: scores ``[layers, heads]``; pruning removes q/k/v rows and output-projection columns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.records import Granularity

if TYPE_CHECKING:
    import torch
    from torch import nn

GROUPS = ("q", "k", "v", "o")


def shapes(model: nn.Module, targets: tuple[str, ...]) -> tuple[int, int]:
    """One row per layer, as wide as the widest layer (an already pruned layer's absent heads are never kept)."""
    from harness import surgery

    geometry = surgery.head_geometry(model)
    return (geometry.num_layers, max(geometry.heads_per_layer))


def config_shapes(config: Any) -> tuple[int, int]:
    from harness import surgery

    geometry = surgery.config_geometry(config)
    return (geometry.num_layers, max(geometry.heads_per_layer))


def apply(model: nn.Module, keep: torch.Tensor) -> nn.Module:
    from harness import surgery

    return surgery.remove_heads(model, keep.bool())


def mask(model: nn.Module, keep: torch.Tensor) -> Any:
    from harness import surgery

    return surgery.mask_heads(model, keep.bool())


def scope(model: nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    from harness import surgery

    return surgery.target_modules(model, GROUPS)


HEAD = Granularity(
    "head", shapes, apply, scope, description="attention heads (q/k/v rows and output-projection columns removed)",
    mask=mask, config_shapes=config_shapes,
)
