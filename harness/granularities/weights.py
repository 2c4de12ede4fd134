"""Single weights of the ``--targets`` modules: scores shaped like each weight; pruning zeros them permanently."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Mapping

from harness.records import Granularity

if TYPE_CHECKING:
    import torch
    from torch import nn


def shapes(model: nn.Module, targets: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    modules = dict(model.named_modules())
    return {name: tuple(modules[name].weight.shape) for name in targets}


def apply(model: nn.Module, keep: Mapping[str, torch.Tensor]) -> nn.Module:
    from harness import surgery

    return surgery.apply_weight_masks(model, held(model, keep))


@contextmanager
def mask(model: nn.Module, keep: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Zeros while the context is open; the dense weights come back after it."""
    import torch

    modules = dict(model.named_modules())
    saved = {name: modules[name].weight.detach().clone() for name in keep}
    with torch.no_grad():
        for name, kept in keep.items():
            modules[name].weight.masked_fill_(~kept.bool().to(modules[name].weight.device), 0)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                modules[name].weight.copy_(weight)


def scope(model: nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(targets)


def held(model: nn.Module, keep: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zeros must stay zeros while a pruned model trains (a merged low-rank update would fill them)."""
    return {name: mask.bool() for name, mask in keep.items()}


WEIGHT = Granularity(
    "weight", shapes, apply, scope, description="single weights of the --targets modules (zeroed permanently)",
    uses_targets=True, held=held, mask=mask,
)
