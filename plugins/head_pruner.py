"""Pruner ``heads``: remove the least important fraction of attention heads.

``scope=global`` ranks all heads together (Michel et al.); ``scope=layer`` removes
the same fraction from every layer. ``min_heads_per_layer`` keeps layers alive.
The harness removes the masked heads physically, so speedups are real.

Budgets: the number of heads to remove is ``round(sparsity * heads)`` (all heads
for ``scope=global``, each layer's for ``scope=layer``): the nearest whole head.

Grouped-query attention (``PruneRequest.kv_heads`` not empty): a model can only
lose whole units, so ``gqa`` picks the unit. ``gqa=groups`` removes whole key/value
groups (a key/value head with all its query heads), ranked by the summed scores of
their query heads; ``gqa=query`` removes the same number of query heads from every
group of a layer (the lowest in each group; a unit is one head per group, ranked by
their summed scores). The head budget is rounded to the nearest head exactly as
without grouping, and must then be a whole number of units: it is never rounded a
second time to a coarser unit (at 3 heads per group that could move the sparsity by
up to 1.5 heads per group), an unreachable budget is a ``UsageError`` naming the
sparsities that are possible. Multi-query attention (one key/value head) has a
single group per layer, so only ``gqa=query`` applies. Grouped models are pruned
from their dense shape: every layer has ``scores.shape[1]`` query heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

from harness import Options, Pruner, PruneRequest, hookimpl, option
from harness.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HeadOptions(Options):
    """Options of ``heads``; the upper bound of ``min_heads_per_layer`` is the model's (checked on the scores)."""

    scope: Literal["global", "layer"] = option("global", help="rank all heads together, or remove the same "
                                               "fraction from every layer")
    min_heads_per_layer: int = option(1, low=1, help="heads every layer keeps")
    gqa: Literal["groups", "query"] = option("groups", help="grouped attention: remove whole key/value groups, "
                                             "or the same number of query heads from every group")


OPTIONS = HeadOptions()
Unit = tuple[float, list[int]]  # (importance, query heads removed together)


def _global(scores: torch.Tensor, remove: int, floor: int) -> torch.Tensor:
    import torch

    keep = torch.ones_like(scores, dtype=torch.bool)
    left = keep.sum(dim=1)
    order = torch.sort(scores.flatten(), stable=True).indices
    removed = 0
    for flat in order.tolist():
        if removed == remove:
            break
        layer, head = divmod(flat, scores.shape[1])
        if left[layer] > floor:
            keep[layer, head] = False
            left[layer] -= 1
            removed += 1
    return keep


def _per_layer(scores: torch.Tensor, sparsity: float, floor: int) -> torch.Tensor:
    import torch

    keep = torch.ones_like(scores, dtype=torch.bool)
    remove = round(sparsity * scores.shape[1])
    if remove > scores.shape[1] - floor:
        raise ValueError(
            f"heads: cannot remove {remove} of {scores.shape[1]} heads per layer keeping {floor} "
            f"(at most {scores.shape[1] - floor})"
        )
    for layer, row in enumerate(scores):
        keep[layer, torch.sort(row, stable=True).indices[:remove]] = False
    return keep


# --------------------------------------------------------------------------- grouped-query attention


def _check_options(options: Mapping, heads: int) -> HeadOptions:
    """Typed options (a dict from tests or older callers is checked the same way), within the model's heads."""
    typed = HeadOptions.of(options)
    if typed.min_heads_per_layer > heads:
        raise ValueError(f"heads: min_heads_per_layer must be in [1, {heads}]")
    return typed


def _unit_shape(heads: int, kv_heads: Sequence[int], mode: str) -> tuple[int, int]:
    """(units per layer, query heads per unit), the same in every layer."""
    if any(kv < 1 or heads % kv for kv in kv_heads):
        raise ValueError(f"heads: {heads} query heads per layer do not split into {list(kv_heads)} key/value groups")
    if len(set(kv_heads)) != 1:
        raise ValueError(f"heads: gqa pruning needs the same key/value head count in every layer, not {list(kv_heads)}")
    kv = kv_heads[0]
    if mode == "groups" and kv == 1:
        raise UsageError("heads: multi-query attention (one key/value head per layer) has no group to remove: use -o heads.gqa=query")
    return (kv, heads // kv) if mode == "groups" else (heads // kv, kv)


def _label(value: float, heads: int, target: int) -> str:
    """The shortest decimal that still asks for ``target`` heads."""
    for digits in range(3, 8):
        text = f"{value:.{digits}f}"
        if round(float(text) * heads) == target:
            return text
    return repr(value)


def _possible(count: int, size: int, heads: int, sparsity: float) -> str:
    """The reachable sparsities, all of them or a range plus the nearest to the request."""
    labels = [_label(k * size / heads, heads, k * size) for k in range(1, count + 1)]
    if len(labels) <= 12:
        return ", ".join(labels) or "none"
    nearest = sorted(range(count), key=lambda k: abs((k + 1) * size / heads - sparsity))[:2]
    near = ", ".join(labels[k] for k in sorted(nearest))
    return f"k/{heads // size} for k = 1..{count} ({labels[0]}, {labels[1]}, ..., {labels[-1]}; nearest {near})"


def gqa_units_to_remove(
    heads: int, kv_heads: Sequence[int], sparsity: float, options: Mapping
) -> tuple[int, int]:
    """Units to remove (in all for ``scope=global``, per layer for ``layer``) and heads per unit.

    Raises ``UsageError`` (one line, with the possible sparsities) when the budget is
    not a whole number of units or breaks ``min_heads_per_layer``.
    """
    typed = _check_options(options, heads)
    scope, floor, mode = typed.scope, typed.min_heads_per_layer, typed.gqa
    per_layer, size = _unit_shape(heads, kv_heads, mode)
    layers = 1 if scope == "layer" else len(kv_heads)
    total = heads * layers
    target = round(sparsity * total)
    room = (per_layer - max(1, -(-floor // size))) * layers
    unit = f"key/value groups of {size} query heads" if mode == "groups" else f"rounds of {size} heads, one per key/value group"
    where = "per layer" if scope == "layer" else "in all"
    if target % size or target // size > room:
        raise UsageError(
            f"heads: sparsity {sparsity:g} asks for {target} of {total} heads {where}, not a whole number of {unit} "
            f"(gqa={mode}: at most {room} of {per_layer * layers} removable keeping {floor} head(s) per layer); "
            f"possible sparsities: {_possible(room, size, total, sparsity)}"
        )
    return target // size, size


def _layer_units(row: torch.Tensor, kv: int, mode: str) -> list[Unit]:
    """One layer's units, in the order they may be removed (cheapest first, stable)."""
    size = len(row) // kv
    groups = [list(range(g * size, (g + 1) * size)) for g in range(kv)]
    values = row.tolist()
    if mode == "groups":
        units = [(sum(values[h] for h in group), group) for group in groups]
        return sorted(units, key=lambda unit: unit[0])
    ranked = [sorted(group, key=lambda h: values[h]) for group in groups]  # stable: ties keep head order
    return [(sum(values[order[r]] for order in ranked), [order[r] for order in ranked]) for r in range(size)]


def _gqa_mask(scores: torch.Tensor, sparsity: float, options: Mapping, kv_heads: Sequence[int]) -> torch.Tensor:
    import torch

    if len(kv_heads) != scores.shape[0]:
        raise ValueError(f"heads: kv_heads has {len(kv_heads)} layers, scores have {scores.shape[0]}")
    count, size = gqa_units_to_remove(scores.shape[1], kv_heads, sparsity, options)
    typed = HeadOptions.of(options)
    mode, floor = typed.gqa, typed.min_heads_per_layer
    units = [_layer_units(row, kv, mode) for row, kv in zip(scores, kv_heads)]
    if typed.scope == "layer":
        chosen = [(layer, position) for layer in range(len(units)) for position in range(count)]
    else:  # cheapest units first, ties in (layer, unit) order; a layer at its floor is skipped
        candidates = sorted((unit[0], layer, p) for layer, row in enumerate(units) for p, unit in enumerate(row))
        left, least = [len(row) for row in units], max(1, -(-floor // size))
        chosen = []
        for _, layer, position in candidates:
            if len(chosen) == count:
                break
            if left[layer] > least:
                chosen.append((layer, position))
                left[layer] -= 1
    keep = torch.ones_like(scores, dtype=torch.bool)
    for layer, position in chosen:
        keep[layer, units[layer][position][1]] = False
    return keep


def compute_mask(request: PruneRequest) -> torch.Tensor:
    scores, sparsity = request.scores, request.sparsity
    options = _check_options(request.options, scores.shape[1])
    floor = options.min_heads_per_layer
    if request.kv_heads:
        return _gqa_mask(scores, sparsity, options, request.kv_heads)
    if options.scope == "layer":
        return _per_layer(scores, sparsity, floor)
    remove = round(sparsity * scores.numel())
    possible = scores.numel() - floor * scores.shape[0]
    if remove > possible:
        raise ValueError(
            f"heads: cannot remove {remove} of {scores.numel()} heads keeping {floor} per layer (at most {possible})"
        )
    return _global(scores, remove, floor)


def check_budgets(geometry: object, sparsities: Sequence[float], options: Mapping) -> None:
    """Before any training: every sparsity must be reachable on this head geometry (``UsageError`` if not).

    ``geometry`` is a ``harness.surgery.HeadGeometry`` (e.g. from ``surgery.heads.config_geometry``).
    Only grouped models can have unreachable budgets beyond ``min_heads_per_layer``.
    """
    kv_heads = getattr(geometry, "kv_heads_per_layer", ())
    heads = max(geometry.heads_per_layer)  # type: ignore[attr-defined]
    for sparsity in sparsities:
        if kv_heads and sparsity > 0:
            gqa_units_to_remove(heads, kv_heads, sparsity, options)


@hookimpl
def harness_pruners() -> list[Pruner]:
    return [
        Pruner(
            name="heads",
            granularity="head",
            compute_mask=compute_mask,
            description="remove the lowest-scoring heads, globally or per layer (whole units under GQA)",
            options=OPTIONS,
        )
    ]
