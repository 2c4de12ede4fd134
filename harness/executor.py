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

from pathlib import Path
from typing import Any, Callable

from harness import atomic, claims, leaderboard
from harness.cache import Cache
from harness.cells import COUNTS, UnitSpec, run_unit, unit_specs
from harness.planning import Plan
from harness.tensorboard import Scalars
from harness.unit import Row, Unit, cache_of, make_unit


def finished(path: Path) -> set[str]:
    """Run ids with an ``ok`` row in an existing leaderboard."""
    frame = leaderboard.read(path)
    return set(frame.loc[frame["status"] == "ok", "run_id"].astype(str))


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
    if plan.config.execution.isolation == "process":
        from harness import isolation

        isolation.run_unit(plan, spec, done, write, bar, cache)
    else:
        unit = make_unit(plan, spec, write, scalars, cache)
        run_unit(unit, done, _Bar(bar, plan, unit))


def _local(plan: Plan, path: Path, write: Callable[[Row], None], bar: Any, cache: Cache) -> None:
    """Every unit: claimed ones first; units another run holds are waited for at the end, then completed."""
    scalars = Scalars(plan.config.execution.tensorboard)
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


def execute(plan: Plan) -> tuple[Any, dict[str, int]]:
    """Run the plan's missing cells, appending rows to ``<out>/leaderboard.csv``.

    Returns this run's rows (as the leaderboard holds them) and the counts: how
    many fine-tunes and scoring passes ran, how many came from the cache and
    how many cells were skipped. Local units run here or in child processes
    (:mod:`harness.isolation`), or as Ray tasks (:mod:`harness.ray_executor`).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    execution = plan.config.execution
    path = Path(execution.out) / "leaderboard.csv"
    atomic.sweep(path.parent)  # what a killed earlier run left half-written
    rows: list[Row] = []

    def write(row: Row) -> None:
        rows.extend(leaderboard.append(path, [row]))

    cache = cache_of(plan)
    bar = tqdm(total=plan.total_cells(), disable=not execution.progress, unit="cell", dynamic_ncols=True)
    try:
        if execution.executor == "ray":
            from harness import ray_executor

            ray_executor.run(plan, finished(path), write, bar, cache)
        else:
            if execution.isolation == "process":
                from harness import isolation

                isolation.check_picklable(plan)
            _local(plan, path, write, bar, cache)
    finally:
        bar.close()
    frame = pd.DataFrame(rows).reindex(columns=list(leaderboard.COLUMNS))
    return frame, {name: int(cache.counts[name]) for name in COUNTS}
