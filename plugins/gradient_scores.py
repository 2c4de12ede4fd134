"""Scorers from gradients over a calibration set: ``gradient`` (|g|), ``taylor`` (|w·g|) and their neuron forms.

Both accumulate over every calibration batch (never one): the absolute value of
each batch's gradient is summed, so batches that disagree in sign do not cancel.
``taylor`` is the first-order Taylor estimate of the loss change when a weight
is zeroed (LeCun et al. 1990; Molchanov et al. 2019). For neurons,
``gradient-neuron`` sums |g| over each neuron's weights and ``taylor-neuron`` is
E_x |dL/dm| for a gate m on the neuron, i.e. |activation · gradient| per example.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from harness import Scorer, ScoreRequest, hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn


@contextmanager
def _only_grad(model: nn.Module, names: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Gradients for the named modules' weights only (the rest is frozen, which saves their backward)."""
    modules = dict(model.named_modules())
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    try:
        for parameter in flags:
            parameter.requires_grad_(False)
        weights = {name: modules[name].weight for name in names}
        for weight in weights.values():
            weight.requires_grad_(True)
        yield weights
    finally:
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
        model.train(was_training)


def accumulate(request: ScoreRequest, names: tuple[str, ...], taylor: bool) -> dict[str, torch.Tensor]:
    """Mean over calibration batches of |g| (or |w·g|) for every named weight."""
    import torch

    from harness import modeling

    if not request.batches:
        raise ValueError("gradient scorers need at least one calibration batch")
    with _only_grad(request.model, names) as weights:
        totals = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
        for batch in request.batches:
            loss = modeling.per_example_loss(request.model, batch).mean()
            grads = torch.autograd.grad(loss, list(weights.values()))
            for (name, weight), grad in zip(weights.items(), grads):
                totals[name] += (grad * weight.detach() if taylor else grad).abs().float()
    return {name: (total / len(request.batches)).cpu() for name, total in totals.items()}


def _targets(request: ScoreRequest) -> tuple[str, ...]:
    from harness import surgery

    return tuple(request.targets) or surgery.target_modules(request.model)


def score_gradient(request: ScoreRequest) -> dict[str, torch.Tensor]:
    return accumulate(request, _targets(request), taylor=False)


def score_taylor(request: ScoreRequest) -> dict[str, torch.Tensor]:
    return accumulate(request, _targets(request), taylor=True)


def score_gradient_neuron(request: ScoreRequest) -> torch.Tensor:
    from harness import surgery

    names = tuple(name for ups, down in surgery.ffn_module_names(request.model) for name in (*ups, down))
    return surgery.neuron_scores(request.model, accumulate(request, names, taylor=False))


def score_taylor_neuron(request: ScoreRequest) -> torch.Tensor:
    """E_x |dL(x)/dm| with one gate per example and neuron: per-example gradients from one backward."""
    import torch

    from harness import modeling, surgery
    from harness.calibration import model_device

    if not request.batches:
        raise ValueError("taylor-neuron needs at least one calibration batch")
    widths, device = surgery.ffn_widths(request.model), model_device(request.model)
    total = torch.full((len(widths), max(widths)), 0.0)  # float32 on the CPU, like every returned score
    with _only_grad(request.model, ()), surgery.NeuronGates(request.model) as gates:
        for batch in request.batches:  # float32 gates on the model's device (cast to the activations' dtype)
            gate = [torch.ones(len(batch["labels"]), w, device=device, requires_grad=True) for w in widths]
            gates.gate = gate
            loss = modeling.per_example_loss(request.model, batch).sum()
            for index, grad in enumerate(torch.autograd.grad(loss, gate)):
                total[index, : widths[index]] += grad.abs().sum(0).float().cpu()
    examples = sum(len(b["labels"]) for b in request.batches)
    for index, width in enumerate(widths):
        total[index, width:] = -examples  # absent neurons of an already pruned layer: never kept
    return total / examples


@hookimpl
def harness_scorers() -> list[Scorer]:
    return [
        Scorer("gradient", "weight", score_gradient, "|dL/dw| averaged over calibration batches"),
        Scorer("taylor", "weight", score_taylor, "|w · dL/dw| averaged over calibration batches (first-order Taylor)"),
        Scorer("gradient-neuron", "neuron", score_gradient_neuron, "sum of |dL/dw| over each FFN neuron's weights"),
        Scorer("taylor-neuron", "neuron", score_taylor_neuron, "E|dL/dm| for a gate m on each FFN neuron"),
    ]
