"""Attribute paths and in-place slicing shared by head and neuron surgery."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def get(root: object, path: str) -> object:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep ``index`` along ``dim`` of the weight (0: output rows, 1: input columns), in place."""
    import torch

    requires_grad = linear.weight.requires_grad
    weight = linear.weight.detach().index_select(dim, index).clone()
    linear.weight = torch.nn.Parameter(weight, requires_grad=requires_grad)
    if dim == 0:
        if linear.bias is not None:
            bias = linear.bias.detach().index_select(0, index).clone()
            linear.bias = torch.nn.Parameter(bias, requires_grad=requires_grad)
        linear.out_features = weight.shape[0]
    else:
        linear.in_features = weight.shape[1]
