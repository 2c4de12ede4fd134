"""Pruning schedules: one shot (the default), or ``iterative:STEPS`` with re-scoring between steps.

Michel et al. (2019) prune heads iteratively: remove a fraction, score the
pruned model again, remove more. ``iterative:STEPS`` reaches the cell's target
sparsity ``s`` in STEPS equal steps: step ``k`` asks the pruner for ``s·k/STEPS``
of the original units, with scores computed on the model as pruned by the steps
before. The model is scored with the removed units gated off by the
granularity's ``mask`` (which conformance checks equal to removal), so the
scores keep the dense shape and every pruner works unchanged: units already
removed get a score below every other, and the keep-mask of a step is the
pruner's mask AND the previous one (a unit once removed stays removed). With
STEPS=1 this is exactly the one-shot cell (the same scores, one pruner call).

A method iterates when its scorer exists, its pruner uses scores and changes no
weights, its scorer does not train the model, and its granularity can gate
units without removing them; the other methods of a grid run one shot only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from harness.errors import UsageError

if TYPE_CHECKING:
    from harness.cells import Cell
    from harness.records import Granularity, Pruner, PruneRequest, Scorer
    from harness.scoring import Scored
    from harness.unit import Unit

ONE_SHOT = "one-shot"
PREFIX = "iterative:"


def steps_of(schedule: str) -> int:
    """How many pruning steps a schedule takes (one shot: 1); a malformed name is a one-line error."""
    if schedule == ONE_SHOT:
        return 1
    text = schedule.removeprefix(PREFIX)
    if schedule.startswith(PREFIX) and text.isdigit() and int(text) >= 1:
        return int(text)
    raise UsageError(f"schedule {schedule!r} is not '{ONE_SHOT}' or '{PREFIX}STEPS' with STEPS a whole number >= 1")


def check(schedules: Sequence[str]) -> None:
    """At least one schedule, each well formed, none twice."""
    if not schedules:
        raise UsageError(f"give at least one schedule ('{ONE_SHOT}' or '{PREFIX}STEPS')")
    for index, schedule in enumerate(schedules):
        steps_of(schedule)
        if schedule in schedules[:index]:
            raise UsageError(f"schedule {schedule!r} is given twice")


def iterates(scorer: Scorer | None, pruner: Pruner, granularity: Granularity | None) -> bool:
    """Whether a method can be pruned in steps (see the module docstring for why each condition)."""
    return (scorer is not None and pruner.uses_scores and not pruner.updates_model and not scorer.updates_model
            and granularity is not None and granularity.mask is not None)


def for_method(schedules: Sequence[str], scorer: Scorer | None, pruner: Pruner,
               granularity: Granularity | None) -> tuple[str, ...]:
    """The schedules a method runs: all of them if it iterates, else one shot only."""
    if iterates(scorer, pruner, granularity):
        return tuple(schedules)
    return (ONE_SHOT,)


@dataclass(frozen=True)
class Gated:
    """Units removed by earlier steps: the keep-mask to gate the model with, and its digest (for cache keys)."""

    keep: Any
    digest: str


def gated(keep: Any) -> Gated:
    """A keep-mask with a digest of its exact values: the scores of a gated model depend on nothing else."""
    tensors = keep if isinstance(keep, dict) else {"": keep}
    sha = hashlib.sha256()
    for name in sorted(tensors):
        mask = tensors[name].bool().contiguous().cpu()
        sha.update(f"{name}:{tuple(mask.shape)}:".encode())
        sha.update(mask.numpy().tobytes())
    return Gated(keep, sha.hexdigest()[:16])


def floored(scores: Any, keep: Any) -> Any:
    """Scores with every removed unit below all others, so a pruner removes those first."""
    import torch

    pairs = scores.items() if isinstance(scores, dict) else [("", scores)]
    values = {name: s.float() for name, s in pairs}
    low = min(float(s.min()) for s in values.values())
    span = max(float(s.abs().max()) for s in values.values())
    floor = low - 1.0 - span
    masks = keep if isinstance(keep, dict) else {"": keep}
    out = {name: torch.where(masks[name].bool(), s, torch.full_like(s, floor)) for name, s in values.items()}
    return out if isinstance(scores, dict) else out[""]


def both(new: Any, old: Any) -> Any:
    """Units kept by this step and every step before."""
    if isinstance(new, dict):
        return {name: new[name].bool() & old[name].bool() for name in new}
    return new.bool() & old.bool()


def stepwise(steps: int, sparsity: float, first: Any, rescore: Callable[[Gated, float], tuple[Any, float]],
             prune: Callable[[Any, float], Any]) -> tuple[Any, float]:
    """The keep-mask after ``steps`` steps to ``sparsity``, and the seconds spent re-scoring.

    ``first`` are the scores of the unpruned model; ``rescore(gated, target)``
    scores the model with the removed units gated off; ``prune(scores, target)``
    is the pruner's (checked) mask for a fraction ``target`` of the units.
    """
    keep, seconds, scores = None, 0.0, first
    for step in range(1, steps + 1):
        target = sparsity * step / steps
        if keep is not None:
            scores, spent = rescore(gated(keep), target)
            seconds += spent
            scores = floored(scores, keep)
        mask = prune(scores, target)
        keep = mask if keep is None else both(mask, keep)
    return keep, seconds


def keep_mask(unit: Unit, cell: Cell, scored: Scored, request: PruneRequest) -> tuple[Any, float, float]:
    """A cell's keep-mask (one pruner call, or one per step of its schedule), the seconds of scoring behind it
    and the seconds the pruner took.

    ``scored`` are the first step's scores (see ``Cell.scoring``); a scorer whose
    scores depend on the budget (``per_sparsity``) scores each step at its target.
    """
    import dataclasses
    import time

    from harness.checks import checked_mask

    pruner, scorer, steps = cell.pruner, cell.scorer, steps_of(cell.schedule)
    assert pruner is not None
    spent = [0.0]

    def prune(values: Any, target: float) -> Any:
        start = time.perf_counter()
        mask = pruner.compute_mask(dataclasses.replace(request, scores=values, sparsity=target))
        spent[0] += time.perf_counter() - start
        return checked_mask(pruner, mask, values)

    if steps == 1:
        return prune(scored.values, cell.sparsity), scored.seconds, spent[0]
    assert scorer is not None
    learns = scorer.per_sparsity

    def rescore(gated: Gated, target: float) -> tuple[Any, float]:
        again = unit.scores(scorer, pruner, target if learns else None, gated)
        return again.values, again.seconds

    keep, seconds = stepwise(steps, cell.sparsity, scored.values, rescore, prune)
    return keep, scored.seconds + seconds, spent[0]
