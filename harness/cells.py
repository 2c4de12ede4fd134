"""Cells and the unit loop: what one unit computes, in which order, whoever runs it.

A unit is one (model, task, adapter, seed): its dense cell comes first (the
fine-tune every other cell starts from), then each (scorer, pruner, sparsity,
recovery) cell, with each scoring pass run once for all the cells that use
it. The same loop runs in this process, in an isolated child process
(:mod:`harness.isolation`) or in a Ray worker (:mod:`harness.ray_executor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from harness import progress
from harness.modeling import release_memory
from harness.planning import Plan
from harness.records import Adapter, Pruner, Scorer
from harness.schedules import ONE_SHOT, steps_of

if TYPE_CHECKING:
    from harness.scoring import Scored
    from harness.unit import Row, Unit

COUNTS = ("fine_tunes_run", "models_hit", "scoring_runs", "scores_hit", "cells_skipped", "corrupt_entries",
          "cache_write_failed")


@dataclass(frozen=True)
class Cell:
    """One row of a unit: the dense model (no scorer, no pruner), or a pruned (and maybe recovered) one."""

    scorer: Scorer | None = None
    pruner: Pruner | None = None
    sparsity: float = 0.0
    recovery: bool = False
    schedule: str = ONE_SHOT  # or "iterative:STEPS" (see harness.schedules)

    @property
    def dense(self) -> bool:
        return self.pruner is None

    @property
    def scoring(self) -> tuple[str, float | None]:
        """Which scoring pass the cell needs: the scorer's, once per sparsity when its scores depend on it."""
        scorer, pruner = self.scorer, self.pruner
        if scorer is None:  # no scores: shapes only, one per granularity
            return (f"none:{pruner.granularity}" if pruner else "none", None)
        # a budget-dependent scorer of an iterative cell first scores at the first step's target
        return (scorer.name, self.sparsity / steps_of(self.schedule) if scorer.per_sparsity else None)

    def label(self) -> str:
        name = self.scorer.name if self.scorer else "none"
        pruner = self.pruner.name if self.pruner else "none"
        schedule = f" {self.schedule}" if self.schedule != ONE_SHOT else ""
        return f"{name}/{pruner}@{self.sparsity}{schedule}" + (" recovered" if self.recovery else "")


DENSE = Cell()


class Reporter(Protocol):
    """What a unit tells whoever runs it: the work it starts (and the cells that depend on it; ``cell``: the step
    is a cell, timed for the ETA), and each cell done (``tick("")``: all of the unit's at once, none timed)."""

    def phase(self, label: str, rows: list[Row], cell: bool = False) -> None: ...

    def tick(self, label: str) -> None: ...


class Silent:
    """A reporter that tells no one (Ray workers)."""

    def phase(self, label: str, rows: list[Row], cell: bool = False) -> None:
        pass

    def tick(self, label: str) -> None:
        pass


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
        for seed in plan.config.grid.seeds
    ]


def plan_cells(plan: Plan, adapter: Adapter | None = None) -> list[Cell]:
    """Every cell of a unit (of ``adapter``: the dense one alone where the plan does not cross it), the dense first."""
    if adapter is not None and not plan.crosses(adapter):
        return [DENSE]
    pruned = [Cell(s, p, sp, r, schedule) for s, p in plan.methods for schedule in plan.schedules(s, p)
              for sp in plan.sparsities for r in plan.recoveries()]
    return [DENSE, *pruned]


def unit_cells(unit: Unit, done: set[str]) -> list[Cell]:
    """The unit's cells whose run id is not in ``done``, the dense one first."""
    return [cell for cell in plan_cells(unit.plan, unit.adapter) if unit.row(cell)["run_id"] not in done]


def unit_label(unit: Unit) -> str:
    """Which unit, for people: model (its last path part), task, adapter when the grid has several, seed."""
    adapter = [unit.adapter.name] if len(unit.plan.adapters) > 1 else []
    return " · ".join([unit.source.name.rstrip("/").split("/")[-1], unit.task.name, *adapter, f"seed {unit.seed}"])


def run_unit(unit: Unit, done: set[str], report: Reporter, failed: frozenset[str] = frozenset()) -> None:
    """Every cell of one unit not in ``done`` (counted as skipped) or ``failed`` (this run's lost cells)."""
    todo = unit_cells(unit, done | failed)
    unit.cache.counts["cells_skipped"] += sum(unit.row(cell)["run_id"] in done for cell in plan_cells(unit.plan, unit.adapter))
    if not todo:
        report.tick("")
        return
    with progress.phase(unit_label(unit)):
        _run_todo(unit, todo, report)


def _run_todo(unit: Unit, todo: list[Cell], report: Reporter) -> None:
    report.phase("fine-tune", [unit.row(cell) for cell in todo])
    try:
        unit.prepare()
        if todo[0] == DENSE:
            report.phase("dense", [unit.row(DENSE)], cell=True)
            with progress.phase("dense"):
                write_rows(unit, unit.dense())
    except (Exception, SystemExit) as error:  # the dense model failed: every cell of the unit depends on it
        for cell in todo:
            unit.write(unit.error_row(cell, error))
        report.tick("")
        return
    report.tick("dense")
    _run_cells(unit, [cell for cell in todo if cell != DENSE], report)


def write_rows(unit: Unit, rows: list[Row]) -> None:
    """A cell's rows (one per metric), its primary row (the cell's run id) last: a resume that finds it, which is
    what marks the cell done, finds the others too."""
    for row in [*rows[1:], *rows[:1]]:
        unit.write(row)


def _run_cells(unit: Unit, todo: list[Cell], report: Reporter) -> None:
    computed: dict[tuple[str, float | None], Scored | BaseException] = {}
    for cell in todo:
        key = cell.scoring
        if key not in computed:
            users = [other for other in todo if other.scoring == key and other.scorer is cell.scorer]
            report.phase(f"scoring {key[0]}" + (f"@{key[1]}" if key[1] is not None else ""),
                         [unit.row(other) for other in users])
            try:
                computed[key] = unit.scores(cell.scorer, cell.pruner, key[1])
            except (Exception, SystemExit) as error:
                computed[key] = error
        outcome = computed[key]
        report.phase(cell.label(), [unit.row(cell)], cell=True)
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            with progress.phase(cell.label()):
                rows = unit.pruned(cell, outcome)
            write_rows(unit, rows)
        except (Exception, SystemExit) as error:
            unit.write(unit.error_row(cell, error))
        release_memory()  # the cell's model and activations are gone: their heap pages go back to the OS
        report.tick(cell.label())
