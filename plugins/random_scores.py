"""Scorer ``random``: seeded random head importance, the baseline every method must beat."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import Scorer, ScoreRequest, hookimpl

if TYPE_CHECKING:
    import torch


def score(request: ScoreRequest) -> torch.Tensor:
    import torch

    from harness import surgery

    heads = surgery.head_geometry(request.model).heads_per_layer
    generator = torch.Generator().manual_seed(int(request.seed) + int(request.options.get("offset", 0)))
    values = torch.rand(len(heads), max(heads), generator=generator)
    for index, n in enumerate(heads):  # absent heads of an already pruned layer: never kept
        values[index, n:] = -1.0
    return values


@hookimpl
def harness_scorers() -> list[Scorer]:
    return [
        Scorer(
            name="random",
            granularity="head",
            score=score,
            description="uniform random head importance, seeded by the grid seed",
            options={"offset": 0},
        )
    ]
