"""Scorers ``random``, ``random-weight`` and ``random-neuron``: seeded random importance, the baselines to beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import Options, Scorer, ScoreRequest, hookimpl, option

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RandomOptions(Options):
    """Options of the random scorers: any integer is a meaningful offset."""

    offset: int = option(0, help="added to the grid seed: another draw at the same seed")


def _generator(request: ScoreRequest) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(int(request.seed) + RandomOptions.of(request.options).offset)


def _padded(widths: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    import torch

    values = torch.rand(len(widths), max(widths), generator=generator)
    for index, n in enumerate(widths):  # absent units of an already pruned layer: never kept
        values[index, n:] = -1.0
    return values


def score(request: ScoreRequest) -> torch.Tensor:
    from harness import surgery

    return _padded(surgery.head_geometry(request.model).heads_per_layer, _generator(request))


def score_neurons(request: ScoreRequest) -> torch.Tensor:
    from harness import surgery

    return _padded(surgery.ffn_widths(request.model), _generator(request))


def score_weights(request: ScoreRequest) -> dict[str, torch.Tensor]:
    import torch

    from harness import surgery

    modules, generator = dict(request.model.named_modules()), _generator(request)
    targets = request.targets or surgery.target_modules(request.model)
    return {name: torch.rand(modules[name].weight.shape, generator=generator) for name in targets}


@hookimpl
def harness_scorers() -> list[Scorer]:
    options = RandomOptions()
    return [
        Scorer("random", "head", score, "uniform random head importance, seeded by the grid seed", options,
               baseline=True),
        Scorer("random-weight", "weight", score_weights, "uniform random weight importance, seeded", options,
               baseline=True),
        Scorer("random-neuron", "neuron", score_neurons, "uniform random FFN-neuron importance, seeded", options,
               baseline=True),
    ]
