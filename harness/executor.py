"""Executing a plan: which units run, where (a child process, this process or Ray tasks), and resuming.

A cell whose run id already has an ``ok`` row in the leaderboard is skipped, so
re-running a command after a crash (even SIGKILL) completes the grid without
losing or duplicating rows; a unit whose cells are all done is not even
fine-tuned. Rows are appended atomically as they arrive. Two runs on one
``--out`` never compute the same unit at once: each unit is claimed (a lock
file the kernel releases if its holder dies) and the finished rows are re-read
once the claim is held, so what the other run wrote is skipped, not redone.

Progress is two lines (:class:`Display`): cells done, with an ETA from the
cells' own durations (fine-tunes and scoring passes left out), and on a
terminal the running phase (:mod:`harness.progress`) with its count and ETA.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from harness import atomic, claims, leaderboard, progress
from harness.cache import Cache
from harness.cells import COUNTS, UnitSpec, run_unit, unit_label, unit_specs
from harness.planning import Plan
from harness.tensorboard import Scalars
from harness.unit import Row, Unit, cache_of, make_unit


def finished(path: Path) -> set[str]:
    """Run ids with an ``ok`` row in an existing leaderboard."""
    frame = leaderboard.read(path)
    return set(frame.loc[frame["status"] == "ok", "run_id"].astype(str))


class CellClock:
    """How long cells take, from a cell's start to its row: the ETA of the cells left.

    Fine-tunes and scoring passes are not cells (each is shown as a phase of its
    own), so a 20-minute fine-tune before the first cell does not make every
    cell look 20 minutes long. Nothing is predicted before a cell has finished.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started: float | None = None
        self.durations: list[float] = []

    def start(self) -> None:
        self.started = self.clock()

    def finish(self, cell: bool = True) -> None:
        """The running cell has its row (``cell=False``: what ran was no cell, or it was lost: not timed)."""
        if cell and self.started is not None:
            self.durations.append(self.clock() - self.started)
        self.started = None

    def seconds_per_cell(self) -> float | None:
        """The mean finished cell's time: the remaining cells' sum is what an ETA needs, so the mean, not the median."""
        return statistics.fmean(self.durations) if self.durations else None

    def eta(self, remaining: int) -> float | None:
        seconds = self.seconds_per_cell()
        return None if seconds is None else remaining * seconds


def _cell_bar(base: type) -> type:
    """A tqdm class whose rate (and so its ETA) is set from cell durations, not from cells done / time elapsed."""

    class CellBar(base):  # type: ignore[misc, valid-type]
        cell_rate: float | None = None  # cells per second; 0: not known yet ('?'); None: tqdm's own

        @property
        def format_dict(self) -> dict[str, Any]:
            values = super().format_dict
            if self.cell_rate is not None:
                values["rate"] = self.cell_rate
            return values

    return CellBar


PHASE_FORMATS = ("{desc} [{elapsed}]", "{desc}: {n_fmt} [{elapsed}, {rate_fmt}]",
                 "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")


class Display:
    """Two lines: cells done (position 0, ETA from cell durations) and the running phase (position 1).

    The phase line is drawn on a terminal only: in a log (CI) it would add a
    line per redraw, and there the cells bar redraws at most every 30 s.
    """

    def __init__(self, total: int, enabled: bool = True, tty: bool = False, timed: bool = True, file: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from tqdm.auto import tqdm

        self.tqdm, self.file, self.timer = tqdm, file, CellClock(clock)
        self.phases = enabled and tty
        self.line: Any = None  # made on the first phase, so nothing is drawn at position 1 before
        self.cells = _cell_bar(tqdm)(total=total, disable=not enabled, unit="cell", dynamic_ncols=True, position=0,
                                     mininterval=0.1 if tty else 30.0, file=file)
        self.cells.cell_rate = 0.0 if timed else None

    @classmethod
    def of(cls, plan: Plan) -> Display:
        e = plan.config.execution
        return cls(plan.total_cells(), e.progress, sys.stderr.isatty(), timed=e.executor != "ray")

    def step(self, label: str, cell: bool) -> None:
        """A unit starts a step (a fine-tune, a scoring pass, a cell); without a phase line the bar names it."""
        if cell:
            self.timer.start()
        if not self.phases:
            self.cells.set_description(label, refresh=False)

    def ticked(self, count: int, cell: bool) -> None:
        """``count`` cells have their rows; ``cell``: the one the last step started (timed)."""
        self.timer.finish(cell)
        seconds = self.timer.seconds_per_cell()
        if self.cells.cell_rate is not None and seconds is not None:
            self.cells.cell_rate = 1.0 / max(seconds, 1e-9)
        self.cells.update(count)

    def eta(self) -> float | None:
        """Seconds the cells left will take, by the finished cells' mean time (None before the first)."""
        return self.timer.eta(self.cells.total - self.cells.n)

    def describe(self, text: str) -> None:
        self.cells.set_description(text, refresh=False)

    def show(self, event: progress.Event, phases: tuple[progress.Phase, ...]) -> None:
        """Draw the innermost open phase with its count, rate and ETA, after the names of those around it."""
        if not self.phases:
            return
        if event == "end":
            phases = phases[:-1]
        inner = phases[-1] if phases else progress.Phase("", None, 0, 0.0)
        label = _fitted(" · ".join(phase.name for phase in phases))
        form = PHASE_FORMATS[0 if inner.total is None and not inner.done else 1 if inner.total is None else 2]
        form = form if phases else "{desc}"  # between units: a blank line
        if self.line is None:  # drawn first with what it is to show
            self.line = self.tqdm(total=inner.total, desc=label, bar_format=form, position=1, leave=False,
                                  dynamic_ncols=True, file=self.file)
        line = self.line
        line.total, line.n, line.bar_format = inner.total, inner.done, form
        line.start_t = line._time() - inner.elapsed
        line.set_description_str(label, refresh=False)
        line.refresh()

    def close(self) -> None:
        if self.line is not None:
            self.line.close()
        self.cells.close()


def _fitted(label: str) -> str:
    """The label cut from the left to leave room for the counts: the innermost phase is what matters."""
    import shutil

    room = max(20, shutil.get_terminal_size().columns - 45)
    return label if len(label) <= room else "…" + label[-(room - 1):]


class _Shown:
    """The reporter of a unit run in this process: its steps and finished cells, on the display."""

    def __init__(self, display: Display, plan: Plan, unit: Unit) -> None:
        self.display, self.cells, self.prefix = display, plan.cells_per_unit(unit.adapter), unit_label(unit)

    def phase(self, label: str, rows: list[Row], cell: bool = False) -> None:
        self.display.step(f"{self.prefix}: {label}", cell)

    def tick(self, label: str) -> None:
        self.display.ticked(self.cells if label == "" else 1, cell=label != "")


def _run_claimed(plan: Plan, spec: UnitSpec, path: Path, write: Callable[[Row], None], display: Display,
                 cache: Cache, scalars: Scalars) -> None:
    """One unit, once its claim is held: finished rows re-read, then run here or in a child process."""
    done = finished(path)
    if plan.config.execution.isolation == "process":
        from harness import isolation

        isolation.run_unit(plan, spec, done, write, display, cache)
    else:
        unit = make_unit(plan, spec, write, scalars, cache)
        run_unit(unit, done, _Shown(display, plan, unit))


def _local(plan: Plan, path: Path, write: Callable[[Row], None], display: Display, cache: Cache) -> None:
    """Every unit: claimed ones first; units another run holds are waited for at the end, then completed."""
    scalars = Scalars(plan.config.execution.tensorboard)
    deferred: list[tuple[UnitSpec, str]] = []
    try:
        for spec in unit_specs(plan):
            name = make_unit(plan, spec, write, scalars, cache).unit_key()
            with claims.claim(path.parent, name, wait=False) as held:
                if held:
                    _run_claimed(plan, spec, path, write, display, cache, scalars)
                    continue
            deferred.append((spec, name))
        for spec, name in deferred:
            display.describe(f"waiting for another run to finish a unit (seed {spec.seed})")
            with claims.claim(path.parent, name, wait=True):
                _run_claimed(plan, spec, path, write, display, cache, scalars)
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

    execution = plan.config.execution
    path = Path(execution.out) / "leaderboard.csv"
    atomic.sweep(path.parent)  # what a killed earlier run left half-written
    rows: list[Row] = []

    def write(row: Row) -> None:
        rows.extend(leaderboard.append(path, [row]))

    cache = cache_of(plan)
    display = Display.of(plan)
    try:
        if execution.executor == "ray":  # phases stay in the workers: only finished units show
            from harness import ray_executor

            ray_executor.run(plan, finished(path), write, display, cache)
        else:
            if execution.isolation == "process":
                from harness import isolation

                isolation.check_picklable(plan)
            shown = progress.throttled(display.show)
            with progress.listening(shown) if display.phases else nullcontext():
                _local(plan, path, write, display, cache)
    finally:
        display.close()
    frame = pd.DataFrame(rows).reindex(columns=list(leaderboard.COLUMNS))
    return frame, {name: int(cache.counts[name]) for name in COUNTS}
