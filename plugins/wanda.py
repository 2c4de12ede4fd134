"""Scorer ``wanda`` (Sun et al. 2023): |W_ij| · ‖X_j‖₂, a weight's size times the norm of the input it reads.

Activation outliers make a few input features of an LLM matter far more than
|W| alone suggests; Wanda keeps the weights that read them. The input norms come
from one forward pass of the dense model over the calibration batches
(:func:`harness.calibration.input_statistics`, padding excluded), for
``nn.Linear`` and GPT-2's ``Conv1D`` alike (:func:`harness.calibration.input_axis`).

Two differences from the reference code, both from the harness's contract
(scores once per unit, reused by every pruner and sparsity): activations are
the dense model's, not those of the layers below as already pruned, and the
norm is over all calibration tokens (the reference scales it by
1/√samples, which changes no ranking). Wanda ranks per output row: pair it
with ``unstructured`` and ``-o unstructured.group=row`` (or a ``pattern``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import Scorer, ScoreRequest, hookimpl

if TYPE_CHECKING:
    import torch

DESCRIPTION = ("|W| times the L2 norm of its input over calibration tokens (Wanda); "
               "pair with -o unstructured.group=row to rank per output as the paper does")


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


@hookimpl
def harness_scorers() -> list[Scorer]:
    return [Scorer("wanda", "weight", score, DESCRIPTION)]
