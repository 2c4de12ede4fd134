"""Scorers ``magnitude`` (|w| of each weight) and ``magnitude-neuron`` (L2 norm of each FFN neuron's weights).

The data-free baselines of weight pruning: with the ``unstructured`` pruner,
``magnitude`` is classic magnitude pruning (Han et al. 2015); with
``structured`` it is Ln-norm row pruning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import Scorer, ScoreRequest, hookimpl

if TYPE_CHECKING:
    import torch


def score_weights(request: ScoreRequest) -> dict[str, torch.Tensor]:
    from harness import surgery

    modules = dict(request.model.named_modules())
    targets = request.targets or surgery.target_modules(request.model)
    return {name: modules[name].weight.detach().abs().float().cpu() for name in targets}


def score_neurons(request: ScoreRequest) -> torch.Tensor:
    from harness import surgery

    modules = dict(request.model.named_modules())
    names = [name for ups, down in surgery.ffn_module_names(request.model) for name in (*ups, down)]
    squares = {name: modules[name].weight.detach().float().cpu() ** 2 for name in names}
    scores = surgery.neuron_scores(request.model, squares)
    return scores.clamp_min(0).sqrt() * (scores >= 0) - (scores < 0).float()


@hookimpl
def harness_scorers() -> list[Scorer]:
    return [
        Scorer(name="magnitude", granularity="weight", score=score_weights, description="|w| of each weight",
               baseline=True),
        Scorer(
            name="magnitude-neuron",
            granularity="neuron",
            score=score_neurons,
            description="L2 norm of each FFN neuron's weights (up rows and down column)",
        ),
    ]
