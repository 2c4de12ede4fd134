"""Executing a plan: which units run, where (this process or Ray tasks), and resuming.

A cell whose run id already has an ``ok`` row in the leaderboard is skipped, so
re-running a command after a crash (even SIGKILL) completes the grid without
losing or duplicating rows; a unit whose cells are all done is not even
fine-tuned. Rows are appended atomically as they arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness import atomic, leaderboard
from harness.bench import Plan
from harness.cache import Cache, default_root, fingerprint_folder
from harness.runner import Row, Scored, Unit
from harness.tracking import Scalars

DENSE = (None, None, 0.0, False)
COUNTS = ("fine_tunes_run", "models_hit", "scoring_runs", "scores_hit", "cells_skipped")


@dataclass(frozen=True)
class UnitSpec:
    """Which unit: indices into the plan's models, tasks and adapters, and the seed (cheap to ship to a worker)."""

    model: int
    task: int
    adapter: int
    seed: int


def unit_specs(plan: Plan) -> list[UnitSpec]:
    return [
        UnitSpec(m, t, a, seed)
        for m in range(len(plan.models))
        for t in range(len(plan.tasks))
        for a in range(len(plan.adapters))
        for seed in plan.config.seeds
    ]


def cache_of(plan: Plan) -> Cache:
    c = plan.config
    return Cache(None if not c.use_cache else Path(c.cache) if c.cache else default_root())


def _data_fingerprint(data: Any) -> str:
    import hashlib
    import json

    splits = [(s.text_a, s.text_b, s.labels) for s in (data.train, data.validation)]
    blob = json.dumps([splits, data.label_names, data.metric, data.max_length])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_unit(plan: Plan, spec: UnitSpec, write: Callable[[Row], None], scalars: Scalars, cache: Cache) -> Unit:
    source = plan.models[spec.model]
    task, data = plan.tasks[spec.task]
    identity = {"model": fingerprint_folder(source.location), "data": _data_fingerprint(data)}
    return Unit(plan, source, task, data, plan.adapters[spec.adapter], spec.seed, write, scalars, cache, identity)


def _cells(plan: Plan) -> list[tuple[Any, Any, float, bool]]:
    """(scorer, pruner, sparsity, recovery) of every pruned cell of a unit."""
    return [(s, p, sp, r) for s, p in plan.methods for sp in plan.sparsities for r in plan.recoveries()]


def unit_cells(unit: Unit, done: set[str]) -> list[tuple[Any, Any, float, bool]]:
    """The unit's cells not in ``done``, its dense cell first."""
    cells = [DENSE, *_cells(unit.plan)]
    return [cell for cell in cells if unit.row(*cell)["run_id"] not in done]


def run_unit(unit: Unit, done: set[str], tick: Callable[[str], None]) -> None:
    """Every cell of one unit not already in ``done``; failures become error rows."""
    todo = [cell for cell in _cells(unit.plan) if unit.row(*cell)["run_id"] not in done]
    dense_done = unit.row(*DENSE)["run_id"] in done
    unit.cache.counts["cells_skipped"] += len(_cells(unit.plan)) - len(todo) + int(dense_done)
    if not todo and dense_done:
        tick("")
        return
    try:
        unit.prepare()
        if not dense_done:
            unit.write(unit.dense())
    except Exception as error:  # the dense model failed: every cell of the unit depends on it
        for cell in [DENSE] * (not dense_done) + todo:
            unit.write(unit.error_row(cell, error))
        tick("")
        return
    tick("dense")
    _run_cells(unit, todo, tick)


def _run_cells(unit: Unit, todo: list[tuple[Any, Any, float, bool]], tick: Callable[[str], None]) -> None:
    computed: dict[tuple[str, float | None], Scored | BaseException] = {}
    for scorer, pruner, sparsity, recovery in todo:
        name = scorer.name if scorer else "none"
        key = (name, sparsity if scorer and scorer.per_sparsity else None)
        if key not in computed:
            try:
                computed[key] = unit.scores(scorer, key[1])
            except Exception as error:
                computed[key] = error
        outcome = computed[key]
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            unit.write(unit.pruned(scorer, pruner, outcome, sparsity, recovery))
        except Exception as error:
            unit.write(unit.error_row((scorer, pruner, sparsity, recovery), error))
        tick(f"{name}/{pruner.name}@{sparsity}" + (" recovered" if recovery else ""))


def finished(path: Path) -> set[str]:
    """Run ids with an ``ok`` row in an existing leaderboard."""
    frame = leaderboard.read(path)
    return set(frame.loc[frame["status"] == "ok", "run_id"].astype(str))


def _local(plan: Plan, done: set[str], write: Callable[[Row], None], bar: Any, cache: Cache) -> None:
    scalars = Scalars(plan.config.tensorboard)
    try:
        for spec in unit_specs(plan):
            unit = make_unit(plan, spec, write, scalars, cache)
            bar.set_description(f"{unit.source.name} × {unit.task.name} × {unit.adapter.name} seed {spec.seed}")

            def tick(label: str, unit: Unit = unit) -> None:
                bar.update(plan.cells_per_unit() if label == "" else 1)
                bar.set_description(f"{unit.source.name} × {unit.task.name} seed {unit.seed}: {label}")

            run_unit(unit, done, tick)
    finally:
        scalars.close()


def execute(plan: Plan, progress: bool = True) -> Any:
    """Run the plan's missing cells, appending rows to ``<out>/leaderboard.csv``; returns this run's rows.

    The returned frame's ``attrs["counts"]`` says how many fine-tunes and scoring
    passes ran, how many came from the cache and how many cells were skipped.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    path = Path(plan.config.out) / "leaderboard.csv"
    atomic.sweep(path.parent)  # what a killed earlier run left half-written
    done = finished(path)
    rows: list[Row] = []

    def write(row: Row) -> None:
        leaderboard.append(path, [row])
        rows.append(row)

    cache = cache_of(plan)
    bar = tqdm(total=plan.total_cells(), disable=not progress, unit="cell", dynamic_ncols=True)
    try:
        if plan.config.executor == "ray":
            from harness import ray_executor

            ray_executor.run(plan, done, write, bar, cache)
        else:
            _local(plan, done, write, bar, cache)
    finally:
        bar.close()
    frame = pd.DataFrame(rows).reindex(columns=list(leaderboard.COLUMNS))
    frame.attrs["counts"] = {name: int(cache.counts[name]) for name in COUNTS}
    return frame

