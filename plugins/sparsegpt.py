"""Pruner ``sparsegpt`` (Frantar & Alistarh 2023): OBS mask selection with reconstruction of the kept weights.

Magnitude and Wanda only choose which weights to zero. SparseGPT also moves the
weights it keeps so that each layer's output on calibration inputs changes as
little as possible: for a row w and input Gram matrix H = XᵀX, zeroing w_j is
compensated by w ← w − (w_j / [H⁻¹]_jj) · H⁻¹_j,: on the columns not yet
visited. Columns are visited left to right; the upper Cholesky factor of H⁻¹
holds every sequential inverse at once, so one factorisation serves the layer.
The mask is chosen ``blocksize`` columns at a time by w² / [H⁻¹]_jj², on the
weights as updated so far (or N of every M inputs, ``pattern``).

As the reference code: dampening ``percdamp`` × mean diag(H), inputs that never
fire get their weights zeroed, and by default calibration is sequential (block l
sees the outputs of blocks 0..l-1 already pruned; :func:`harness.calibration.
sequential_statistics`). One difference by default: each block of columns
removes exactly its share of ``round(sparsity × weights)``, so the module's count
is exactly what ``unstructured`` would remove. The reference code (and
llmcompressor's SparseGPTModifier, which copies it) removes every weight whose
saliency is at most the ``int(n × sparsity)``-th lowest of the block's n: one
more per block, ties included; ``count=reference`` does that, for comparisons
against them. Either way the result is very sensitive to float rounding: on
SmolLM2-135M at 50%, runs that differ only in how the calibration windows are
batched keep ~98% of the same mask and their WikiText-2 perplexity spans ~2%.

It ignores scores (``uses_scores=False``: one row per sparsity, scorer
``none``) and changes the weights it keeps (``updates_model=True``: its rows say
``updates_weights``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from harness import Options, Pruner, PruneRequest, hookimpl, option

if TYPE_CHECKING:
    import torch
    from torch import nn

DESCRIPTION = ("SparseGPT: chooses the mask by OBS saliency and reconstructs the kept weights from each layer's "
               "calibration Hessian, block by block (sequential); unstructured or N:M")


@dataclass(frozen=True)
class SparseGPTOptions(Options):
    """Options of ``sparsegpt``, defaults as the reference code."""

    pattern: str = option("", help="N:M semi-structured (e.g. 2:4): keep N of every M consecutive inputs of each "
                          "output; the sparsity must be 1-N/M")
    sequential: bool = option(True, help="calibrate each block on the outputs of the blocks below as already "
                              "pruned (false: every block from the dense model's activations, one pass)")
    blocksize: int = option(128, low=1, help="columns whose mask is chosen together (a multiple of M for a pattern)")
    percdamp: float = option(0.01, low=0.0, help="dampening added to the Hessian's diagonal, as a fraction of its mean")
    count: Literal["exact", "reference"] = option("exact", help="weights removed per column block (unstructured): "
                                                  "exactly its share of round(sparsity × weights), or as the "
                                                  "reference code: every one at or below the int(n × sparsity)-th "
                                                  "lowest saliency of the block's n (one more, ties included)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pattern:
            from harness_plugins.prune_methods import nm_pattern

            m = nm_pattern(self.pattern)[1]
            if self.blocksize % m:
                raise ValueError(f"blocksize {self.blocksize} must be a multiple of M={m} for pattern {self.pattern}")


def _inverse_factor(gram: torch.Tensor, percdamp: float) -> torch.Tensor:
    """The upper Cholesky factor U of (H + λI)⁻¹: row j of U, divided by U_jj, is the OBS update for column j."""
    import torch

    h = gram.clone()
    if h.device.type == "mps":  # linear algebra MPS may lack (cholesky_inverse): on the CPU, the factor moved back
        return _inverse_factor(h.cpu(), percdamp).to(gram.device)
    h.diagonal().add_(percdamp * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def _select(block: torch.Tensor, diag: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` weights of a column block with the lowest OBS error w² / [H⁻¹]_jj², as a pruned-mask."""
    import torch

    pruned = torch.zeros(block.numel(), dtype=torch.bool, device=block.device)
    if count:
        saliency = (block.square() / diag.square().unsqueeze(0)).flatten()
        pruned[torch.topk(saliency, count, largest=False).indices] = True
    return pruned.view(block.shape)


def _select_as_reference(block: torch.Tensor, diag: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference code's block mask: saliency at or below the ``int(n × sparsity)``-th lowest (0-based) of n."""
    import torch

    saliency = block.square() / diag.square().unsqueeze(0)
    threshold = torch.sort(saliency.flatten()).values[min(int(saliency.numel() * sparsity), saliency.numel() - 1)]
    return saliency <= threshold


def reconstruct(weight: torch.Tensor, gram: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None = None,
                blocksize: int = 128, percdamp: float = 0.01, fixed: torch.Tensor | None = None,
                count: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one ``[out, in]`` weight: (keep-mask, reconstructed weight with zeros where pruned), float32.

    ``gram`` is XᵀX of the layer's inputs (its scale does not matter). ``fixed``,
    a keep-mask, skips mask selection: only the reconstruction runs. ``count``
    (unstructured only): ``"exact"`` removes each block's share of
    ``round(sparsity × weights)``, ``"reference"`` as the reference code does.
    Always float32, with autocast off: under ``torch.autocast`` the OBS updates
    (matmuls) would otherwise run in bfloat16/float16.
    """
    from harness.calibration import full_precision

    with full_precision(weight.device):
        return _reconstruct(weight, gram, sparsity, pattern, blocksize, percdamp, fixed, count)


def _reconstruct(weight: torch.Tensor, gram: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None,
                 blocksize: int, percdamp: float, fixed: torch.Tensor | None,
                 count: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    w = weight.detach().float().contiguous().clone()
    rows, cols = w.shape
    gram = gram.detach().to(w.device, torch.float32).clone()
    dead = gram.diagonal() == 0
    gram[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = _inverse_factor(gram, percdamp)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block, factor = w[:, start:end].clone(), u[start:end, start:end]
        if fixed is not None:
            pruned[:, start:end] = ~fixed[:, start:end].to(pruned.device, torch.bool)
        elif pattern is None and count == "reference":
            pruned[:, start:end] = _select_as_reference(block, factor.diagonal(), sparsity)
        elif pattern is None:
            share = round(sparsity * rows * end) - round(sparsity * rows * start)
            pruned[:, start:end] = _select(block, factor.diagonal(), share)
        errors = _sweep(block, factor, pruned[:, start:end], None if fixed is not None else pattern)
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
    return ~pruned, w


def _sweep(block: torch.Tensor, factor: torch.Tensor, pruned: torch.Tensor,
           pattern: tuple[int, int] | None) -> torch.Tensor:
    """Zero the pruned weights of a column block one column at a time, each error spread on the columns right of it.

    ``block`` and ``pruned`` are updated in place (a pattern chooses its N:M
    groups as it reaches them); returns the scaled errors for the columns beyond.
    """
    import torch

    errors = torch.zeros_like(block)
    for i in range(block.shape[1]):
        if pattern is not None and i % pattern[1] == 0:
            n, m = pattern
            group = block[:, i:i + m].square() / factor.diagonal()[i:i + m].square().unsqueeze(0)
            pruned[:, i:i + m] = False
            pruned[:, i:i + m].scatter_(1, torch.topk(group, m - n, dim=1, largest=False).indices, True)
        column = block[:, i]
        kept = torch.where(pruned[:, i], torch.zeros_like(column), column)
        error = (column - kept) / factor[i, i]
        block[:, i:] -= error.unsqueeze(1) * factor[i, i:].unsqueeze(0)
        block[:, i] = kept
        errors[:, i] = error
    return errors


def _prune_module(module: nn.Module, gram: torch.Tensor, sparsity: float, options: SparseGPTOptions,
                  pattern: tuple[int, int] | None) -> torch.Tensor:
    """Reconstruct one module's weight in place; its keep-mask in the weight's own orientation."""
    import torch

    from harness.calibration import input_axis

    axis = input_axis(module)
    weight = module.weight.detach().movedim(axis, -1)  # [out, in] for Linear and Conv1D alike
    keep, rebuilt = reconstruct(weight, gram.to(weight.device), sparsity, pattern, options.blocksize, options.percdamp,
                                count=options.count)
    with torch.no_grad():
        module.weight.copy_(rebuilt.to(module.weight.dtype).movedim(-1, axis))
    return keep.movedim(-1, axis).cpu()


def _pattern(options: SparseGPTOptions, sparsity: float) -> tuple[int, int] | None:
    from harness_plugins.prune_methods import PATTERN_TOLERANCE, nm_pattern

    if not options.pattern:
        return None
    n, m = nm_pattern(options.pattern)
    if not math.isclose(sparsity, 1 - n / m, abs_tol=PATTERN_TOLERANCE):
        raise ValueError(f"pattern {options.pattern} prunes exactly {1 - n / m:g} of the weights, not {sparsity:g}: "
                         f"run it at sparsity {1 - n / m:g}")
    return n, m


def compute_mask(request: PruneRequest) -> dict[str, torch.Tensor]:
    """Masks for every scored module; the model copy's kept weights reconstructed in place."""
    import torch

    from harness import calibration, progress

    options = SparseGPTOptions.of(request.options)
    pattern = _pattern(options, request.sparsity)
    if request.sparsity == 0 and pattern is None:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in request.scores.items()}
    if request.model is None or not request.batches:
        raise ValueError("sparsegpt needs the model and calibration batches (PruneRequest.model and .batches)")
    modules, names, keep = dict(request.model.named_modules()), list(request.scores), {}

    def update(stats: dict[str, calibration.InputStats]) -> None:
        for name, stat in stats.items():
            assert stat.gram is not None
            keep[name] = _prune_module(modules[name], stat.gram, request.sparsity, options, pattern)
            request.log("sparsegpt/calibration_tokens", float(stat.tokens), 0)
            step()

    with progress.phase("SparseGPT reconstruction", total=len(names)) as step:  # a step per module reconstructed
        if options.sequential:
            calibration.sequential_statistics(request.model, request.batches, names, update)
        else:
            update(calibration.input_statistics(request.model, request.batches, names, gram=True))
    return keep


@hookimpl
def harness_pruners() -> list[Pruner]:
    return [Pruner("sparsegpt", "weight", compute_mask, DESCRIPTION, SparseGPTOptions(), uses_scores=False,
                   updates_model=True)]
