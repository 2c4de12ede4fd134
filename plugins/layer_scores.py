"""Scorers of whole transformer blocks (granularity ``layer``): ``block-influence``, ``layer-gradient``, ``random-layer``.

``block-influence`` is ShortGPT's Block Influence (Men et al. 2024): a block
whose output hidden states point the same way as its input changes little, so
BI_l = 1 − E_t cos(x_t, block_l(x)_t), averaged over every real token of the
calibration batches (padding excluded). ``layer-gradient`` is the head-gradient
idea one level up: a gate g = 1 scales each block's residual update
(x + g · (block(x) − x)) and the importance is E|dL/dg|. Higher is more
important for all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import Options, Scorer, ScoreRequest, hookimpl, option

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LayerGradientOptions(Options):
    """Options of ``layer-gradient``."""

    per_example: bool = option(False, help="absolute gradient per example (else per batch) before averaging")


@dataclass(frozen=True)
class RandomLayerOptions(Options):
    """Options of ``random-layer``: every offset from 0 up is another draw."""

    offset: int = option(0, low=0, help="added to the grid seed: another draw at the same seed")


def _check_batches(request: ScoreRequest, name: str) -> None:
    if not request.batches:
        raise ValueError(f"{name} needs at least one calibration batch")


def block_influence(request: ScoreRequest) -> torch.Tensor:
    """1 − mean cosine similarity of each block's input and output hidden states over real tokens, ``[L]``."""
    import torch
    import torch.nn.functional as F

    from harness import surgery
    from harness.calibration import calibrating, model_device
    from harness.modeling import model_inputs

    _check_batches(request, "block-influence")
    model, count = request.model, surgery.num_layers(request.model)
    sums, tokens, current = [0.0] * count, [0] * count, {"mask": None}

    def visit(index: int, x: torch.Tensor, y: torch.Tensor) -> None:
        similarity = F.cosine_similarity(x.float(), y.float(), dim=-1).reshape(-1)  # one per token
        mask = current["mask"]
        if mask is not None:
            if mask.numel() != similarity.numel():
                raise RuntimeError(f"block {index}: {similarity.numel()} token states, attention mask {tuple(mask.shape)}")
            similarity = similarity[mask.reshape(-1).bool()]
        sums[index] += float((1.0 - similarity).sum(dtype=torch.float64))
        tokens[index] += similarity.numel()

    device = model_device(model)
    with surgery.BlockVisitor(model, visit), calibrating(model):
        for batch in request.batches:
            inputs = {key: value.to(device) for key, value in model_inputs(batch).items()}
            current["mask"] = inputs.get("attention_mask")
            model(**inputs)
    return torch.tensor([s / max(n, 1) for s, n in zip(sums, tokens)], dtype=torch.float32)


def _gate_gradients(request: ScoreRequest, per_example: bool) -> torch.Tensor:
    """Sum over the calibration set of |dL/dg| per block, per example (or per batch), ``[L]``."""
    import torch

    from harness import modeling, surgery
    from harness.calibration import model_device

    model, device = request.model.eval(), model_device(request.model)
    count = surgery.num_layers(model)
    total = torch.zeros(count)
    with surgery.LayerGates(model) as gates:
        for batch in request.batches:
            batch = {key: value.to(device) for key, value in batch.items()}
            shape = (len(batch["labels"]), count) if per_example else (count,)
            gate = torch.ones(shape, device=device, requires_grad=True)
            gates.gate = gate
            losses = modeling.per_example_loss(model, batch)
            (grad,) = torch.autograd.grad(losses.sum() if per_example else losses.mean(), gate)
            total += grad.detach().abs().reshape(-1, count).sum(0).float().cpu()
    return total


def layer_gradient(request: ScoreRequest) -> torch.Tensor:
    """E|dL/dg| for a gate g = 1 on each block's residual update, over calibration batches (or examples), ``[L]``."""
    _check_batches(request, "layer-gradient")
    per_example = LayerGradientOptions.of(request.options).per_example
    trainable = [p for p in request.model.parameters() if p.requires_grad]
    was_training = request.model.training
    for parameter in trainable:  # only the gates' gradients are needed
        parameter.requires_grad_(False)
    try:
        total = _gate_gradients(request, per_example)
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
        request.model.train(was_training)
    count = sum(len(b["labels"]) for b in request.batches) if per_example else len(request.batches)
    return total / count


def random_layer(request: ScoreRequest) -> torch.Tensor:
    import torch

    from harness import surgery

    seed = int(request.seed) + RandomLayerOptions.of(request.options).offset
    return torch.rand(surgery.num_layers(request.model), generator=torch.Generator().manual_seed(seed))


@hookimpl
def harness_scorers() -> list[Scorer]:
    return [
        Scorer("block-influence", "layer", block_influence,
               "ShortGPT block influence: 1 - cos(block input, block output) over real calibration tokens "
               "(Men et al. 2024)"),
        Scorer("layer-gradient", "layer", layer_gradient,
               "E|dL/dg| of a gate g scaling each block's residual update (head-gradient one level up)",
               LayerGradientOptions()),
        Scorer("random-layer", "layer", random_layer, "uniform random block importance, seeded by the grid seed",
               RandomLayerOptions(), baseline=True),
    ]
