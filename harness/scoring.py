"""A unit's scores: each scorer runs once on a copy of the dense model, and its output is cached under a key of
everything that can change it (the unit's fine-tune, the scorer and its options, sparsity, targets, budget, code).

Split from :mod:`harness.unit` so that what a scoring pass depends on reads in one place.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.cache import digest, untied
from harness.checks import checked_scores
from harness.plugins import options_for, options_label
from harness.records import Granularity, Scorer, ScoreRequest
from harness.tensorboard import recording

if TYPE_CHECKING:
    from harness.schedules import Gated
    from harness.unit import Unit


@dataclass(frozen=True)
class Scored:
    """A scorer's output, its wall time and the last value of every scalar it logged."""

    values: Any
    seconds: float
    extras: dict[str, float]
    model: Any = None  # the scorer's trained copy, when it updates the model


def score_key(unit: Unit, scorer: Scorer, sparsity: float | None, granularity: Granularity,
              gated: Gated | None = None) -> str:
    """The cache key of one scoring pass: the unit's fine-tune key plus what the scorer itself depends on."""
    plan = unit.plan
    label = options_label(scorer, plan.overrides) or scorer.name
    code = {"scorer": plan.code_of(scorer), "granularity": plan.code_of(granularity)}
    after = {"gated": gated.digest} if gated is not None else {}
    return digest({"unit": unit.unit_key(), "scorer": label, "sparsity": sparsity,
                   "targets": unit.targets(granularity), "budget": unit.budget.stages("train", "score"),
                   "code": code, **after})


def cached(unit: Unit, scorer: Scorer, key: str) -> Scored | None:
    """The stored pass under ``key``, with the scorer's trained copy rebuilt when it updates the model."""
    found = unit.cache.load_tensors("scores", key)
    if found is None:
        return None
    tensors, meta = found
    scores = {k[len("scores/"):]: v for k, v in tensors.items() if k.startswith("scores/")}
    model = None
    if scorer.updates_model:
        model = copy.deepcopy(unit.model)
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        model.load_state_dict(state, strict=False)
        model.eval()
    values = scores if meta["dict"] else scores[""]
    return Scored(values, float(meta["seconds"]), dict(meta["extras"]), model)


def store(unit: Unit, key: str, scored: Scored) -> None:
    """Cache a pass: its score tensors, the trained copy's state where there is one, its time and extras."""
    tensors = scored.values if isinstance(scored.values, dict) else {"": scored.values}
    tensors = {f"scores/{name}": t for name, t in tensors.items()}
    if scored.model is not None:
        tensors.update({f"model/{k}": v for k, v in scored.model.state_dict().items()})
    meta = {"seconds": scored.seconds, "extras": scored.extras, "dict": isinstance(scored.values, dict)}
    unit.cache.save_tensors("scores", key, untied(tensors), meta)


def compute(unit: Unit, scorer: Scorer, sparsity: float | None, granularity: Granularity, expected: Any,
            gated: Gated | None) -> Scored:
    """Run the scorer on a copy of the dense model (``gated`` units masked off), timed, its output checked."""
    from harness import progress
    from harness.cells import Cell

    model = copy.deepcopy(unit.model)
    label = unit.row(Cell(scorer, None, sparsity or 0.0))["run_id"]
    extras: dict[str, float] = {}
    log = recording(unit.scalars.logger(f"{scorer.name}-{label}"), extras)
    options = options_for(scorer, unit.plan.overrides)
    request = ScoreRequest(model, unit.calibration, unit.seed, options, sparsity, unit.train_batches, log,
                           unit.targets(granularity))
    at = f"@{sparsity:g}" if sparsity is not None else ""
    start = time.perf_counter()
    gate = granularity.mask(model, gated.keep) if gated is not None and granularity.mask else nullcontext()
    with progress.phase(f"scoring {scorer.name} ({granularity.name}){at}"), gate, unit.placement.autocast():
        values = scorer.score(request)
    elapsed = time.perf_counter() - start
    values = checked_scores(scorer, values, expected)
    return Scored(values, elapsed, extras, model if scorer.updates_model else None)
