"""FFN neurons: scores ``[layers, width]``; pruning removes up-projection rows and down-projection columns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.records import Granularity

if TYPE_CHECKING:
    import torch
    from torch import nn

GROUPS = ("ffn_in", "ffn_out")


def shapes(model: nn.Module, targets: tuple[str, ...]) -> tuple[int, int]:
    from harness import surgery

    widths = surgery.ffn_widths(model)
    return (len(widths), max(widths))


def config_shapes(config: Any) -> tuple[int, int] | None:
    """From the config, unless neurons were already removed (their widths then differ per layer)."""
    from harness import surgery

    width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    if width is None or getattr(config, surgery.KEPT_NEURONS_KEY, None):
        return None
    return (int(config.num_hidden_layers), int(width))


def apply(model: nn.Module, keep: torch.Tensor) -> nn.Module:
    from harness import surgery

    return surgery.remove_neurons(model, keep.bool())


def mask(model: nn.Module, keep: torch.Tensor) -> Any:
    from harness import surgery

    return surgery.mask_neurons(model, keep.bool())


def scope(model: nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    from harness import surgery

    return surgery.target_modules(model, GROUPS)


NEURON = Granularity(
    "neuron", shapes, apply, scope, description="FFN intermediate units (up rows and down columns removed)",
    mask=mask, config_shapes=config_shapes,
)
