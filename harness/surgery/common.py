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


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores its weight as ``[in, out]`` (transposed from ``nn.Linear``)."""
    return hasattr(module, "nf") and hasattr(module, "nx")


def slice_projection(module: nn.Module, index: torch.Tensor, side: str) -> None:
    """Keep ``index`` of a projection's outputs (``side="out"``) or inputs (``"in"``), in place.

    Works for ``nn.Linear`` and GPT-2's ``Conv1D`` alike, so layout code names a side,
    never a weight dimension.
    """
    import torch

    if side not in ("out", "in"):
        raise ValueError(f"side must be 'out' or 'in', not {side!r}")
    conv = _is_conv1d(module)
    dim = weight_axis(module, side)  # Linear: out rows are dim 0; Conv1D: out columns are dim 1
    requires_grad = module.weight.requires_grad
    index = index.to(module.weight.device)  # index_select needs the index on the weight's device
    weight = module.weight.detach().index_select(dim, index).clone()
    module.weight = torch.nn.Parameter(weight, requires_grad=requires_grad)
    if side == "out" and module.bias is not None:
        bias = module.bias.detach().index_select(0, index).clone()
        module.bias = torch.nn.Parameter(bias, requires_grad=requires_grad)
    attr = ("nf" if side == "out" else "nx") if conv else ("out_features" if side == "out" else "in_features")
    setattr(module, attr, weight.shape[dim])


def out_width(module: nn.Module) -> int:
    """Output features of an ``nn.Linear`` or a ``Conv1D``."""
    return int(module.nf) if _is_conv1d(module) else int(module.out_features)


def in_width(module: nn.Module) -> int:
    """Input features of an ``nn.Linear`` or a ``Conv1D``."""
    return int(module.nx) if _is_conv1d(module) else int(module.in_features)


def weight_axis(module: nn.Module, side: str) -> int:
    """The weight dimension that indexes the projection's outputs (``"out"``) or inputs (``"in"``)."""
    return int((side == "out") == _is_conv1d(module))


class ProjectionGates:
    """Base of the gate contexts: one forward pre-hook per layer on the projection whose input is gated.

    Subclasses name those modules (``_modules``) and build each layer's hook (``_hook``).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list = []

    def _modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _hook(self, index: int):
        raise NotImplementedError

    def __enter__(self):
        for index, module in enumerate(self._modules()):
            self._handles.append(module.register_forward_pre_hook(self._hook(index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def times_gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x * gate`` in ``x``'s dtype and device: a float32 gate would promote bf16/fp16 activations to float32 before
    a bf16 projection. A gate that takes gradients multiplies in at least float32, since dL/dgate sums over tokens."""
    import torch

    if gate.requires_grad:
        wide = torch.promote_types(x.dtype, torch.float32)
        return (x.to(wide) * gate.to(x.device, wide)).to(x.dtype)
    return x * gate.to(x.device, x.dtype)
