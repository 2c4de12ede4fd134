"""2:4 weights on torch's semi-structured sparse kernels (CUDA), so that a 2:4 model's latency is that of kernels
that skip its zeros rather than the dense kernel's multiplying them.

The converted copy computes the same function as the masked model; it is made
for the timed passes only (evaluation runs on the masked model). A layer is
converted when every group of 4 consecutive inputs of every output row holds at
most 2 nonzeros and torch's converter accepts its shape, dtype and device.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

SPARSE_KERNEL_DTYPES = ("float16", "bfloat16")  # the semi-structured kernels' floating-point dtypes


@dataclass(frozen=True)
class Converted:
    """A timing copy and what was converted in it."""

    model: nn.Module
    converted: tuple[str, ...]  # the linear layers now on the sparse kernels
    linear: int  # linear layers in the model


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive inputs (columns) of every row holds at most 2 nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    groups = weight.detach().reshape(weight.shape[0], -1, 4)
    return bool(((groups != 0).sum(dim=-1) <= 2).all())


def semi_structured(model: nn.Module, convert: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Converted:
    """A copy of ``model`` whose 2:4 linear weights are torch's ``SparseSemiStructuredTensor``.

    ``convert`` defaults to ``torch.sparse.to_sparse_semi_structured``; a layer it
    refuses (a shape that is not a multiple of the kernel's tile, a dtype or device
    without the kernels) stays dense in the copy, and is not counted as converted.
    """
    import torch

    convert = convert or torch.sparse.to_sparse_semi_structured
    timed = copy.deepcopy(model)
    converted, linear = [], 0
    for name, module in timed.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        linear += 1
        if not is_two_four(module.weight):
            continue
        try:
            sparse = convert(module.weight.detach().contiguous())
        except (RuntimeError, ValueError, NotImplementedError):
            continue
        module.weight = torch.nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    return Converted(timed, tuple(converted), linear)
