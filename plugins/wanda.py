"""Scorer ``wanda`` (Sun et al. 2023): |W_ij| · ‖X_j‖₂, a weight's size times the norm of the input it reads.

Activation outliers make a few input features of an LLM matter far more than
|W| alone suggests; Wanda keeps the weights that read them. The input norms come
from one forward pass of the dense model over the calibration batches
(:func:`harness.calibration.input_statistics`, padding excluded), for
``nn.Linear`` and GPT-2's ``Conv1D`` alike (:func:`harness.calibration.input_axis`).

``wanda`` differs from the reference code in one way, from the harness's
contract (scores once per unit, reused by every pruner and sparsity): the
activations are the dense model's. ``wanda-sequential`` is the reference's
protocol: block by block, each block's input norms measured on the outputs of
the blocks below *as already pruned* (row-wise, or N:M with its ``pattern``,
at the cell's sparsity, on a private copy), so it is scored once per sparsity.
Both take the norm over all calibration tokens (the reference scales it by
1/√samples, which changes no ranking). Wanda ranks per output row: pair either
with ``unstructured`` and ``-o unstructured.group=row`` (or the same ``pattern``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import Options, Scorer, ScoreRequest, hookimpl, option

if TYPE_CHECKING:
    import torch

DESCRIPTION = ("|W| times the L2 norm of its input over calibration tokens (Wanda); "
               "pair with -o unstructured.group=row to rank per output as the paper does")
SEQUENTIAL = ("Wanda as the reference runs it: each block's input norms taken with the blocks below already "
              "pruned (row-wise at the cell's sparsity); pair with -o unstructured.group=row")


@dataclass(frozen=True)
class SequentialOptions(Options):
    """Options of ``wanda-sequential``: how the blocks below are pruned while the next one is measured."""

    pattern: str = option("", help="prune the blocks below N:M (e.g. 2:4) instead of row-wise; use the same "
                          "-o unstructured.pattern")


def score(request: ScoreRequest) -> dict[str, torch.Tensor]:
    """One weight-shaped score per target module: |W| scaled by its input feature's norm over real tokens."""
    from harness import calibration, surgery

    targets = tuple(request.targets) or surgery.target_modules(request.model)
    modules = dict(request.model.named_modules())
    stats = calibration.input_statistics(request.model, request.batches, targets)
    scores = {}
    for name in targets:
        module = modules[name]
        norms = stats[name].norms().unsqueeze(1 - calibration.input_axis(module))  # along the output axis
        scores[name] = module.weight.detach().abs().float().cpu() * norms
    return scores


def score_sequential(request: ScoreRequest) -> dict[str, torch.Tensor]:
    """Wanda scores block by block, each block measured after the blocks below were pruned (on a copy)."""
    import copy

    from harness_plugins.prune_methods import unstructured

    from harness import PruneRequest, calibration, surgery

    assert request.sparsity is not None, "wanda-sequential is scored per sparsity"
    options = SequentialOptions.of(request.options)
    interim = {"pattern": options.pattern} if options.pattern else {"group": "row"}
    model = copy.deepcopy(request.model)  # the interim pruning never touches the model the harness gave
    targets = tuple(request.targets) or surgery.target_modules(model)
    modules, scores = dict(model.named_modules()), {}

    def update(stats: dict[str, calibration.InputStats]) -> None:
        block = {}
        for name, stat in stats.items():
            norms = stat.norms().unsqueeze(1 - calibration.input_axis(modules[name]))
            block[name] = modules[name].weight.detach().abs().float().cpu() * norms
        surgery.apply_weight_masks(model, unstructured(PruneRequest(block, request.sparsity, interim, model=model)))
        scores.update(block)

    calibration.sequential_statistics(model, request.batches, targets, update, gram=False)
    return {name: scores[name] for name in targets}


@hookimpl
def harness_scorers() -> list[Scorer]:
    return [Scorer("wanda", "weight", score, DESCRIPTION),
            Scorer("wanda-sequential", "weight", score_sequential, SEQUENTIAL, SequentialOptions(), per_sparsity=True)]
