"""Executing a plan: which units run, where (a child process, this process or Ray tasks), and resuming.

A cell whose run id already has an ``ok`` row in the leaderboard is skipped, so
re-running a command after a crash (even SIGKILL) completes the grid without
losing or duplicating rows; a unit whose cells are all done is not even
fine-tuned. Rows are appended atomically as they arrive. Two runs on one
``--out`` never compute the same unit at once: each unit is claimed (a lock
file the kernel releases if its holder dies) and the finished rows are re-read
once the claim is held, so what the other run wrote is skipped, not redone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from harness import atomic, claims, leaderboard
from harness.bench import Plan
from harness.cache import Cache, default_root, fingerprint_folder
from harness.runner import Row, Scored, Unit
from harness.tracking import Scalars

DENSE = (None, None, 0.0, False)
COUNTS = ("fine_tunes_run", "models_hit", "scoring_runs", "scores_hit", "cells_skipped", "corrupt_entries",
          "cache_write_failed")
Cell = tuple[Any, Any, float, bool]


class Reporter(Protocol):
    """What a unit tells whoever runs it: the work it starts (and the cells that depend on it), and progress."""

    def phase(self, label: str, rows: list[Row]) -> None: ...

    def tick(self, label: str) -> None: ...


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


def _cells(plan: Plan) -> list[Cell]:
    """(scorer, pruner, sparsity, recovery) of every pruned cell of a unit."""
    return [(s, p, sp, r) for s, p in plan.methods for sp in plan.sparsities for r in plan.recoveries()]


def unit_cells(unit: Unit, done: set[str]) -> list[Cell]:
    """The unit's cells not in ``done``, its dense cell first."""
    cells = [DENSE, *_cells(unit.plan)]
    return [cell for cell in cells if unit.row(*cell)["run_id"] not in done]


def run_unit(unit: Unit, done: set[str], report: Reporter, failed: frozenset[str] = frozenset()) -> None:
    """Every cell of one unit not in ``done`` (counted as skipped) or ``failed`` (this run's lost cells)."""
    skip = done | failed
    todo = unit_cells(unit, skip)
    unit.cache.counts["cells_skipped"] += sum(unit.row(*cell)["run_id"] in done for cell in [DENSE, *_cells(unit.plan)])
    if not todo:
        report.tick("")
        return
    report.phase("fine-tune", [unit.row(*cell) for cell in todo])
    try:
        unit.prepare()
        if todo[0] == DENSE:
            report.phase("dense", [unit.row(*DENSE)])
            unit.write(unit.dense())
    except (Exception, SystemExit) as error:  # the dense model failed: every cell of the unit depends on it
        for cell in todo:
            unit.write(unit.error_row(cell, error))
        report.tick("")
        return
    report.tick("dense")
    _run_cells(unit, [cell for cell in todo if cell != DENSE], report)


def _run_cells(unit: Unit, todo: list[Cell], report: Reporter) -> None:
    computed: dict[tuple[str, float | None], Scored | BaseException] = {}
    for scorer, pruner, sparsity, recovery in todo:
        name = scorer.name if scorer else "none"
        key = (name, sparsity if scorer and scorer.per_sparsity else None)
        if key not in computed:
            users = [cell for cell in todo if _score_key(cell) == key and cell[0] is scorer]
            report.phase(f"scoring {name}" + (f"@{key[1]}" if key[1] is not None else ""),
                         [unit.row(*cell) for cell in users])
            try:
                computed[key] = unit.scores(scorer, key[1])
            except (Exception, SystemExit) as error:
                computed[key] = error
        outcome = computed[key]
        label = f"{name}/{pruner.name}@{sparsity}" + (" recovered" if recovery else "")
        report.phase(label, [unit.row(scorer, pruner, sparsity, recovery)])
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            unit.write(unit.pruned(scorer, pruner, outcome, sparsity, recovery))
        except (Exception, SystemExit) as error:
            unit.write(unit.error_row((scorer, pruner, sparsity, recovery), error))
        report.tick(label)


def _score_key(cell: Cell) -> tuple[str, float | None]:
    scorer, _, sparsity, _ = cell
    return (scorer.name if scorer else "none", sparsity if scorer and scorer.per_sparsity else None)


def finished(path: Path) -> set[str]:
    """Run ids with an ``ok`` row in an existing leaderboard."""
    frame = leaderboard.read(path)
    return set(frame.loc[frame["status"] == "ok", "run_id"].astype(str))


class Silent:
    """A reporter that tells no one (Ray workers)."""

    def phase(self, label: str, rows: list[Row]) -> None:
        pass

    def tick(self, label: str) -> None:
        pass


class _Bar:
    """Progress: the bar, and what the unit is doing now."""

    def __init__(self, bar: Any, plan: Plan, unit: Unit) -> None:
        self.bar, self.plan, self.unit = bar, plan, unit

    def phase(self, label: str, rows: list[Row]) -> None:
        self.bar.set_description(f"{self.unit.source.name} × {self.unit.task.name} seed {self.unit.seed}: {label}")

    def tick(self, label: str) -> None:
        self.bar.update(self.plan.cells_per_unit() if label == "" else 1)


def _run_claimed(plan: Plan, spec: UnitSpec, path: Path, write: Callable[[Row], None], bar: Any, cache: Cache,
                 scalars: Scalars) -> None:
    """One unit, once its claim is held: finished rows re-read, then run here or in a child process."""
    done = finished(path)
    if plan.config.isolation == "process":
        from harness import isolation

        isolation.run_unit(plan, spec, done, write, bar, cache)
    else:
        unit = make_unit(plan, spec, write, scalars, cache)
        run_unit(unit, done, _Bar(bar, plan, unit))


def _local(plan: Plan, path: Path, write: Callable[[Row], None], bar: Any, cache: Cache) -> None:
    """Every unit: claimed ones first; units another run holds are waited for at the end, then completed."""
    scalars = Scalars(plan.config.tensorboard)
    deferred: list[tuple[UnitSpec, str]] = []
    try:
        for spec in unit_specs(plan):
            name = make_unit(plan, spec, write, scalars, cache).unit_key()
            with claims.claim(path.parent, name, wait=False) as held:
                if held:
                    _run_claimed(plan, spec, path, write, bar, cache, scalars)
                    continue
            deferred.append((spec, name))
        for spec, name in deferred:
            bar.set_description(f"waiting for another run to finish a unit (seed {spec.seed})")
            with claims.claim(path.parent, name, wait=True):
                _run_claimed(plan, spec, path, write, bar, cache, scalars)
    finally:
        scalars.close()


def execute(plan: Plan, progress: bool = True) -> Any:
    """Run the plan's missing cells, appending rows to ``<out>/leaderboard.csv``; returns this run's rows.

    The returned frame's ``attrs["counts"]`` says how many fine-tunes and scoring
    passes ran, how many came from the cache and how many cells were skipped.
    The rows are the ones the leaderboard holds for the cells this run computed.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    path = Path(plan.config.out) / "leaderboard.csv"
    atomic.sweep(path.parent)  # what a killed earlier run left half-written
    rows: list[Row] = []

    def write(row: Row) -> None:
        rows.extend(leaderboard.append(path, [row]))

    cache = cache_of(plan)
    bar = tqdm(total=plan.total_cells(), disable=not progress, unit="cell", dynamic_ncols=True)
    try:
        if plan.config.executor == "ray":
            from harness import ray_executor

            ray_executor.run(plan, finished(path), write, bar, cache)
        else:
            if plan.config.isolation == "process":
                from harness import isolation

                isolation.check_picklable(plan)
            _local(plan, path, write, bar, cache)
    finally:
        bar.close()
    frame = pd.DataFrame(rows).reindex(columns=list(leaderboard.COLUMNS))
    frame.attrs["counts"] = {name: int(cache.counts[name]) for name in COUNTS}
    return frame
