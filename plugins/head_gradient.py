"""Scorer ``head-gradient``: head importance of Michel et al. (2019), "Are Sixteen Heads Really Better than One?".

Importance of head h is E_x |dL(x)/dξ_h|, where ξ_h gates the head's output.
A gate per example (``[B, H]`` per layer) gives every example's gradient from one
backward pass, so the absolute value is taken before averaging and signs never cancel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import Options, Scorer, ScoreRequest, hookimpl, option

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HeadGradientOptions(Options):
    """Options of ``head-gradient``."""

    normalize: bool = option(True, help="divide each layer's importance by its L2 norm (Michel et al.)")
    per_example: bool = option(True, help="absolute gradient per example (else per batch) before averaging")


OPTIONS = HeadGradientOptions()


def _accumulate(request: ScoreRequest) -> torch.Tensor:
    """Sum over the calibration set of |dL/dgate|, per example (or per batch), shape [L, H]."""
    import torch

    from harness import modeling, surgery
    from harness.calibration import model_device

    model = request.model.eval()
    heads, device = surgery.head_geometry(model).heads_per_layer, model_device(model)
    total = torch.zeros(len(heads), max(heads))  # float32 on the CPU, like every returned score
    per_example = HeadGradientOptions.of(request.options).per_example
    with surgery.HeadGates(model) as gates:
        for batch in request.batches:  # float32 gates on the model's device (cast to the activations' dtype)
            size = len(batch["labels"]) if per_example else 1
            layer_gates = [torch.ones(size, n, device=device, requires_grad=True) for n in heads]
            gates.gate = layer_gates
            loss = modeling.per_example_loss(model, batch).sum()
            grads = torch.autograd.grad(loss, layer_gates)
            for index, grad in enumerate(grads):
                total[index, : heads[index]] += grad.abs().sum(0).float().cpu()
    return total


def score(request: ScoreRequest) -> torch.Tensor:
    import torch

    if not request.batches:
        raise ValueError("head-gradient needs at least one calibration batch")
    frozen = [p for p in request.model.parameters() if p.requires_grad]
    was_training = request.model.training
    for parameter in frozen:  # only gate gradients are needed: skip weight gradients
        parameter.requires_grad_(False)
    try:
        total = _accumulate(request)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
        request.model.train(was_training)
    examples = sum(len(b["labels"]) for b in request.batches)
    importance = total / examples
    if HeadGradientOptions.of(request.options).normalize:  # Michel et al.: L2 per layer
        importance = importance / importance.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(importance.dtype).tiny)
    return importance


@hookimpl
def harness_scorers() -> list[Scorer]:
    return [
        Scorer(
            name="head-gradient",
            granularity="head",
            score=score,
            description="E|dL/d gate| over a calibration set (Michel et al. 2019)",
            options=OPTIONS,
        )
    ]
