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
    refused: tuple[str, ...] = ()  # 2:4 layers the converter refused (shape, dtype, device), dense in the copy
    error: str = ""  # the first refusal's message


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive inputs (columns) of every row holds at most 2 nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    groups = weight.detach().reshape(weight.shape[0], -1, 4)
    return bool(((groups != 0).sum(dim=-1) <= 2).all())


def two_four_layers(model: nn.Module) -> tuple[str, ...]:
    """The linear layers of ``model`` whose weight is 2:4."""
    import torch

    return tuple(name for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and is_two_four(module.weight))


def semi_structured(model: nn.Module, convert: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Converted:
    """A copy of ``model`` whose 2:4 linear weights are torch's ``SparseSemiStructuredTensor``.

    ``convert`` defaults to ``torch.sparse.to_sparse_semi_structured``; a layer it
    refuses (a shape that is not a multiple of the kernel's tile, a dtype or device
    without the kernels) stays dense in the copy and is listed in ``refused``.
    The copy shares every tensor it does not convert with ``model`` (no second
    model in memory); with no 2:4 layer, ``model`` itself comes back.
    """
    import torch

    layers = two_four_layers(model)
    linear = sum(isinstance(module, torch.nn.Linear) for module in model.modules())
    if not layers:
        return Converted(model, (), linear)
    convert = convert or torch.sparse.to_sparse_semi_structured
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    timed = copy.deepcopy(model, memo=shared)
    modules = dict(timed.named_modules())
    converted, refused, error = [], [], ""
    for name in layers:
        module = modules[name]
        try:
            sparse = convert(module.weight.detach().contiguous())
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError, NotImplementedError) as refusal:
            refused.append(name)
            error = error or f"{type(refusal).__name__}: {refusal}".splitlines()[0][:200]
            continue
        module.weight = torch.nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    return Converted(timed, tuple(converted), linear, tuple(refused), error)
