"""``harness.run``: a bench grid from Python, returning the rows and what the run cost.

The command line (``harness bench``) and the scripts in ``benchmarks/`` are thin
callers of :func:`run`, so a grid run from a notebook is the same grid, with
the same run ids, cache and resumption, as one run from a shell.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.config import BenchConfig
from harness.errors import UsageError


@dataclass(frozen=True)
class Result:
    """What a bench run produced.

    ``rows``: the rows this run computed (as the leaderboard stores them);
    ``leaderboard``: every current row of ``out`` (the newest per cell, earlier
    runs' included); ``counts``: fine-tunes and scoring passes run and cached,
    cells skipped (already done), corrupt cache entries recomputed.
    """

    config: BenchConfig
    rows: Any
    leaderboard: Any
    counts: Mapping[str, int]
    cells: int  # cells in the grid
    older_rows: int = 0  # rows of the same cells from other code or budgets, left out of ``leaderboard``
    out: Path = field(default=Path("runs/latest"))

    @property
    def failed(self) -> Any:
        return self.rows[self.rows["status"] != "ok"]

    @property
    def ok(self) -> bool:
        return self.failed.empty

    def cell_count(self, rows: Any) -> int:
        """Cells, not rows: a cell scored by an external suite writes one row per metric."""
        from harness.leaderboard import AGGREGATE_KEYS

        keys = [k for k in (*AGGREGATE_KEYS, "seed") if k != "metric" and k in rows]
        return int(len(rows.astype("string").drop_duplicates(subset=keys))) if len(rows) else 0

    def summary(self) -> str:
        """The run in two lines: cells ok/failed/skipped, and fine-tunes and scoring passes run/cached."""
        c = self.counts
        failed = self.cell_count(self.failed)
        text = (f"{self.cell_count(self.rows) - failed} ok, {failed} failed, {c.get('cells_skipped', 0)} already done; "
                f"fine-tunes run {c.get('fine_tunes_run', 0)} (cached {c.get('models_hit', 0)}), "
                f"scoring passes run {c.get('scoring_runs', 0)} (cached {c.get('scores_hit', 0)})")
        if c.get("corrupt_entries"):
            text += f"; corrupt cache entries recomputed {c['corrupt_entries']}"
        return text


def check_output(out: Path) -> None:
    """Before any work: ``out`` can be written and its leaderboard read (it is never overwritten if not)."""
    from harness import atomic, leaderboard

    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / ".write-test", "").unlink()
    except OSError as error:
        raise UsageError(f"--out {out} cannot be written ({error.strerror or error})") from None
    leaderboard.read(out / "leaderboard.csv")


def configure(config: BenchConfig | str | Path | None = None, **settings: Any) -> BenchConfig:
    """A config from a ``BenchConfig``, a grid file, or the defaults, with ``settings`` (flat names) applied."""
    from harness import config as configs

    if config is None:
        base = BenchConfig()
    elif isinstance(config, BenchConfig):
        base = config
    elif isinstance(config, (str, Path)):
        base = configs.load(Path(config))
    else:
        raise UsageError(f"config must be a BenchConfig or a grid file path, not {type(config).__name__}")
    return configs.apply(base, settings)


def run(config: BenchConfig | str | Path | None = None, *, plugins_objects: Iterable[object] = (),
        command: str | None = None, **settings: Any) -> Result:
    """Run a grid; resume it if ``out`` already holds some of its rows. Bad input raises ``UsageError``.

    ``config`` is a :class:`~harness.config.BenchConfig` or a grid file (TOML);
    ``settings`` override single fields by name (``sparsities=[0.5]``,
    ``train_steps=50``, ``out="runs/x"``, ...). ``plugins_objects`` registers
    plugin modules or objects directly, next to the installed ones.
    """
    from harness import config as configs
    from harness import leaderboard, provenance
    from harness.executor import execute
    from harness.planning import make_plan
    from harness.plugins import load_registry, parse_options

    chosen = configure(config, **settings)
    registry = load_registry(plugins_objects)
    plan = make_plan(chosen, registry, parse_options(chosen.grid.options, registry))
    out = Path(chosen.execution.out)
    check_output(out)
    provenance.record(out, command or "harness.run(...)", configs.to_toml(chosen))
    if chosen.execution.progress:
        print(f"harness: {plan.total_cells()} cells -> {out / 'leaderboard.csv'}", file=sys.stderr)
        if plan.dense_only:
            print(f"harness: adapters {', '.join(sorted(plan.dense_only))} on the dense model only "
                  "(--cross-adapters: every method under every adapter)", file=sys.stderr)
    rows, counts = execute(plan)
    stored = leaderboard.read(out / "leaderboard.csv")
    current = leaderboard.current(stored)
    leaderboard.write_aggregate(current, out / "leaderboard_seeds.csv")
    return Result(chosen, rows, current, counts, plan.total_cells(), len(stored) - len(current), out)
