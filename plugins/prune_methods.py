"""Pruners built on ``torch.nn.utils.prune``: weights (unstructured, N:M, Ln-structured, random) and FFN neurons.

Each pruner calls a pruning method's ``compute_mask`` on the scorer's importance
instead of on the weights, so any scorer (magnitude, gradient, Taylor, random)
drives any method. torch's own methods rank by |t|; :func:`importance_method`
is the custom ``BasePruningMethod`` that ranks by the importance as given.
The harness applies the masks (``prune.custom_from_mask`` + ``prune.remove``)
or, for neurons, slices the FFN. ``unstructured`` also makes N:M semi-structured
masks and, with ``owl``, budgets each layer by its outliers (:mod:`harness_plugins.owl`).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from harness import Options, Pruner, PruneRequest, hookimpl, option

if TYPE_CHECKING:
    import torch

PATTERN_TOLERANCE = 0.005  # a grid sparsity this close to 1 - N/M is the pattern's (0.67 for 1:3)


@dataclass(frozen=True)
class UnstructuredOptions(Options):
    """Options of ``unstructured``: what weights compete (module, row, N:M block) and OWL's per-layer budgets."""

    group: Literal["module", "row"] = option("module", help="rank weights within each module, or within each "
                                             "output row (Wanda)")
    pattern: str = option("", help="N:M semi-structured (e.g. 2:4): keep the N best of every M consecutive inputs "
                          "of each output; the sparsity must be 1-N/M; group has no effect")
    owl: bool = option(False, help="OWL: a sparsity per layer, lower where more scores are outliers; their "
                       "mean weighted by weights per layer is the sparsity (ratios in the row's extras)")
    owl_m: float = option(5.0, low=1.0, help="OWL: a score is an outlier above owl_m times its layer's mean")
    owl_lambda: float = option(0.08, low=0.0, high=0.5, help="OWL: layer sparsities span 2*owl_lambda before "
                               "clipping (0: uniform)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pattern:
            nm_pattern(self.pattern)
        if self.pattern and self.owl:
            raise ValueError("owl picks a sparsity per layer while pattern N:M fixes it at 1-N/M: use one of them")


@dataclass(frozen=True)
class GlobalUnstructuredOptions(Options):
    """Options of ``global-unstructured``: raw scores rarely compare across modules."""

    normalize: Literal["none", "mean", "lamp"] = option("none", help="make importance comparable across modules: "
                                                        "divide by each module's mean, or rank LAMP scores")


@dataclass(frozen=True)
class StructuredOptions(Options):
    """Options of ``structured``."""

    n: int = option(1, low=1, help="order of the norm that ranks rows")


@dataclass(frozen=True)
class NeuronOptions(Options):
    """Options of ``neurons``."""

    scope: Literal["global", "layer"] = option("global", help="rank all neurons together, or remove the same "
                                               "fraction from every layer")
    min_per_layer: int = option(1, low=1, help="neurons every layer keeps (scope=global)")


@functools.lru_cache(maxsize=1)
def importance_method() -> type:
    """``ImportanceUnstructured``: defined on first use so importing the plugin stays free of torch."""
    import torch
    from torch.nn.utils import prune

    class ImportanceUnstructured(prune.BasePruningMethod):
        """Zero the ``amount`` fraction of entries with the lowest importance (ties broken by position)."""

        PRUNING_TYPE = "unstructured"

        def __init__(self, amount: float) -> None:
            if not 0.0 <= amount <= 1.0:
                raise ValueError(f"amount must be in [0, 1], not {amount}")
            self.amount = amount

        def compute_mask(self, importance: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
            mask = default_mask.clone(memory_format=torch.contiguous_format)
            count = round(self.amount * importance.numel())
            if count:
                values = importance.reshape(-1)
                values = values if values.is_floating_point() else values.float()
                lowest = torch.topk(values, count, largest=False).indices
                mask.view(-1)[lowest] = 0
            return mask

    return ImportanceUnstructured


def _ones(t: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.ones_like(t, dtype=torch.float32)


def _row_mask(scores: torch.Tensor, axis: int, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the lowest ``round(sparsity * n)`` of each output row, ``axis`` being the input axis.

    Ties go to the lower position (stable sort), so the mask is deterministic.
    """
    import torch

    if scores.dim() != 2:
        raise ValueError(f"group=row needs 2-d weight scores, not shape {tuple(scores.shape)}")
    rows = scores.movedim(axis, -1)  # [out, in] for Linear and Conv1D alike
    rows = rows if rows.is_floating_point() else rows.float()
    count = round(sparsity * rows.shape[-1])
    keep = torch.ones(rows.shape, dtype=torch.bool)
    keep.scatter_(-1, torch.sort(rows.cpu(), dim=-1, stable=True).indices[:, :count], False)
    return keep.movedim(-1, axis)


def nm_pattern(pattern: str) -> tuple[int, int]:
    """``"N:M"`` as ``(N, M)`` with ``1 <= N < M``; ``ValueError`` for anything else."""
    n, colon, m = pattern.partition(":")
    if not (colon and n.isdigit() and m.isdigit() and 1 <= int(n) < int(m)):
        raise ValueError(f"pattern must be N:M with 1 <= N < M (e.g. 2:4), not {pattern!r}")
    return int(n), int(m)


def _pattern_mask(name: str, scores: torch.Tensor, axis: int, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive inputs of each output (ties: the lower position goes)."""
    import torch

    rows = scores.movedim(axis, -1)  # [out, in] for Linear and Conv1D alike
    out, width = rows.shape
    if width % m:
        raise ValueError(f"pattern {n}:{m} needs an input width divisible by {m}: {name} has {width} inputs")
    blocks = rows.float().cpu().reshape(out, width // m, m)
    keep = torch.ones(blocks.shape, dtype=torch.bool)
    keep.scatter_(-1, torch.sort(blocks, dim=-1, stable=True).indices[..., : m - n], False)
    return keep.reshape(out, width).movedim(-1, axis)


def _pattern_masks(request: PruneRequest, pattern: str) -> dict[str, torch.Tensor]:
    """N:M masks along each module's input axis; the grid's sparsity must be the pattern's 1 - N/M."""
    import math

    from harness.calibration import input_axis

    n, m = nm_pattern(pattern)
    if not math.isclose(request.sparsity, 1 - n / m, abs_tol=PATTERN_TOLERANCE):
        raise ValueError(f"pattern {pattern} prunes exactly {1 - n / m:g} of the weights, not {request.sparsity:g}: "
                         f"run it at sparsity {1 - n / m:g}")
    modules = _modules(request, f"pattern {pattern}")
    return {name: _pattern_mask(name, s, input_axis(modules[name]), n, m) for name, s in request.scores.items()}


def _modules(request: PruneRequest, why: str) -> dict:
    if request.model is None:
        raise ValueError(f"unstructured with {why} needs the model (PruneRequest.model) to find output rows")
    return dict(request.model.named_modules())


def _owl_amounts(request: PruneRequest, options: UnstructuredOptions) -> dict[str, float]:
    """Each module's sparsity: its layer's OWL ratio, every ratio logged to the row's extras."""
    from harness_plugins import owl

    cap = 1 - 1 / min(min(s.shape) for s in request.scores.values())  # every output row keeps a weight
    ratios = owl.layer_sparsities(request.scores, request.sparsity, options.owl_m, options.owl_lambda, cap)
    for index, ratio in ratios.items():
        request.log(f"owl/sparsity_layer{index}", ratio, 0)
    return {name: ratios[owl.layer_of(name)] for name in request.scores}


def unstructured(request: PruneRequest) -> dict[str, torch.Tensor]:
    """Layer-wise: the lowest-importance ``sparsity`` of every module's weights, of every output row, or N:M.

    ``group=row`` compares weights only with those feeding the same output (Wanda,
    Sun et al. 2023), which keeps every output alive; it reads the module types
    from ``request.model`` to find the output rows (``Conv1D`` stores ``[in, out]``).
    ``pattern=N:M`` keeps the N best of every M consecutive inputs of an output
    (what sparse tensor cores run). ``owl`` gives each layer its own sparsity.
    """
    options = UnstructuredOptions.of(request.options)
    if options.pattern:
        return _pattern_masks(request, options.pattern)
    if options.owl:
        amounts = _owl_amounts(request, options)
    else:
        amounts = dict.fromkeys(request.scores, request.sparsity)
    if options.group == "row":
        from harness.calibration import input_axis

        modules = _modules(request, "group=row")
        return {name: _row_mask(s, input_axis(modules[name]), amounts[name]) for name, s in request.scores.items()}
    methods = {amount: importance_method()(amount) for amount in set(amounts.values())}
    return {name: methods[amounts[name]].compute_mask(s, _ones(s)).bool() for name, s in request.scores.items()}


def lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP score of each entry (Lee et al. 2021): s² / Σ s'² over the module's entries with s' ≥ s.

    Scale-free within a module, and a module's largest entry always scores 1, so
    a global ranking of LAMP scores keeps at least one entry of every module
    below 100% sparsity (ties at exactly 1 aside); the lowest scores sit where a
    module has many entries much smaller than its large ones. Float64: in
    float32, the ratios of a large module's smallest entries underflow to ties.
    """
    import torch

    flat = scores.reshape(-1).cpu().double().square()  # on the CPU: float64 (MPS has none)
    order = torch.argsort(flat)
    ranked = flat[order]
    tail = ranked.flip(0).cumsum(0).flip(0)  # Σ over entries ranked at or above each one
    values = torch.empty_like(flat)
    values[order] = ranked / tail.clamp_min(torch.finfo(torch.float64).tiny)
    return values.view(scores.shape)


def _normalized(scores: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    import torch

    if how == "mean":
        return {name: s.float() / s.float().mean().clamp_min(torch.finfo(torch.float32).tiny) for name, s in scores.items()}
    if how == "lamp":
        return {name: lamp(s) for name, s in scores.items()}
    return scores


def global_unstructured(request: PruneRequest) -> dict[str, torch.Tensor]:
    """Global: the lowest-importance ``sparsity`` of all targeted weights together (``prune.global_unstructured``).

    Raw scores compare across modules only when their scales do: |w| roughly
    does, |g| does not (a module whose outputs barely reach the loss, like the
    last layer's queries under CLS pooling, has tiny gradients everywhere and
    would be emptied first). ``normalize=mean`` divides each module's importance
    by its mean first; ``normalize=lamp`` ranks by :func:`lamp` scores instead.
    """
    import torch

    method = importance_method()(request.sparsity)
    scores = _normalized(request.scores, GlobalUnstructuredOptions.of(request.options).normalize)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])  # float64 when normalized by LAMP
    mask = method.compute_mask(flat, _ones(flat)).bool()
    pieces = torch.split(mask, [s.numel() for s in scores.values()])
    return {name: piece.view(s.shape) for (name, s), piece in zip(scores.items(), pieces)}


def structured(request: PruneRequest) -> dict[str, torch.Tensor]:
    """Whole rows (output units) of each module, ranked by the Ln norm of their importance (``LnStructured``)."""
    from torch.nn.utils import prune

    method = prune.LnStructured(request.sparsity, n=StructuredOptions.of(request.options).n, dim=0)
    return {name: method.compute_mask(s.float(), _ones(s)).bool() for name, s in request.scores.items()}


def _random(request: PruneRequest, structured_rows: bool) -> dict[str, torch.Tensor]:
    """torch's random methods, seeded per module by the grid seed and the module name."""
    import torch
    from torch.nn.utils import prune

    amount = request.sparsity
    method = prune.RandomStructured(amount, dim=0) if structured_rows else prune.RandomUnstructured(amount)
    masks = {}
    with torch.random.fork_rng(devices=[]):  # only the CPU generator is seeded, and restored afterwards
        for name, s in request.scores.items():
            # the CPU generator alone (torch.manual_seed would also reseed every GPU's, outside the fork), and
            # the draws made on the CPU: the same masks whatever device the scores are on
            torch.default_generator.manual_seed(int(request.seed) * 1_000_003 + zlib.crc32(name.encode()))
            s = s.cpu()
            masks[name] = method.compute_mask(s, _ones(s)).bool()
    return masks


def random_unstructured(request: PruneRequest) -> dict[str, torch.Tensor]:
    return _random(request, structured_rows=False)


def random_structured(request: PruneRequest) -> dict[str, torch.Tensor]:
    return _random(request, structured_rows=True)


def neurons(request: PruneRequest) -> torch.Tensor:
    """FFN neurons, lowest importance first, per layer or globally; every layer keeps ``min_per_layer``.

    Scores below 0 mark neurons a layer no longer has; they are never kept and
    not counted. Global removal that would empty a layer below the minimum keeps
    that layer's best neurons and removes the next-lowest elsewhere instead, so
    the total stays ``round(sparsity * neurons)``.
    """
    import torch

    scores = request.scores.float()
    present = scores >= 0
    options = NeuronOptions.of(request.options)
    minimum = options.min_per_layer
    method = importance_method()(request.sparsity)
    if options.scope == "layer":
        keep = torch.zeros_like(present)
        for index in range(len(scores)):
            row = scores[index, present[index]]
            keep[index, : len(row)] = method.compute_mask(row, _ones(row)).bool()
        return keep & present
    remove = round(request.sparsity * int(present.sum()))
    ranked = torch.where(present, scores, torch.inf)
    protected = torch.zeros_like(present)
    for index in range(len(scores)):  # each layer's best `minimum` neurons are never removed
        best = torch.topk(torch.where(present[index], scores[index], -torch.inf), min(minimum, int(present[index].sum())))
        protected[index, best.indices] = True
    ranked = torch.where(protected, torch.inf, ranked).reshape(-1)
    if remove > int((present & ~protected).sum()):
        raise ValueError(f"cannot remove {remove} neurons and keep {minimum} in every layer")
    keep = present.clone().reshape(-1)
    keep[torch.topk(ranked, remove, largest=False).indices] = False
    return keep.view(present.shape)


@hookimpl
def harness_pruners() -> list[Pruner]:
    return [
        Pruner("unstructured", "weight", unstructured, "lowest-importance weights per module, output row "
               "(group=row, for wanda) or N:M block (pattern=2:4); owl=true: OWL's per-layer sparsities",
               UnstructuredOptions()),
        Pruner("global-unstructured", "weight", global_unstructured, "lowest-importance weights across modules",
               GlobalUnstructuredOptions()),
        Pruner("structured", "weight", structured, "rows with the lowest Ln norm of importance (LnStructured)",
               StructuredOptions()),
        Pruner("random-unstructured", "weight", random_unstructured, "RandomUnstructured, seeded",
               uses_scores=False),
        Pruner("random-structured", "weight", random_structured, "RandomStructured rows, seeded", uses_scores=False),
        Pruner("neurons", "neuron", neurons, "FFN neurons by importance, removed physically",
               NeuronOptions()),
    ]
