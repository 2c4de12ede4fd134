"""Ray executor (``--executor ray``): every unit is a Ray task; the driver writes rows as tasks finish.

Units are independent (one fine-tune each), so they are the unit of
distribution. The plan is put in the object store once. A unit whose worker
dies is retried (``--retries``); when retries run out its cells become error
rows and the grid goes on. The same grid gives the same rows as the local
executor: same run ids, same cached fine-tunes and scores.

Progress: the cells bar moves as units finish. Phases announced in workers
(:mod:`harness.progress`) are not shown: nothing listens there, so they cost
nothing, and the ETA is tqdm's own (units run in parallel, fine-tunes and all).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from harness.cache import Cache
from harness.errors import UsageError
from harness.planning import Plan
from harness.unit import Row


def _unit_task(plan: Plan, spec: Any, done: set[str], cache_root: Path | None,
               threads: int | None = None) -> tuple[list[Row], dict[str, int]]:
    """Run one unit in a worker, on the driver's torch thread count (part of every key: another count computes
    other bits, so rows would get other run ids than the local executor's); its rows and cache counters go back."""
    from harness.cells import Silent, run_unit
    from harness.tensorboard import Scalars
    from harness.unit import make_unit

    if threads:
        import torch

        torch.set_num_threads(threads)

    rows: list[Row] = []
    cache = Cache(cache_root)
    scalars = Scalars(plan.config.execution.tensorboard)
    try:
        run_unit(make_unit(plan, spec, rows.append, scalars, cache), done, Silent())
    finally:
        scalars.close()
    return rows, dict(cache.counts)


def _start(plan: Plan) -> bool:
    """Connect to ``--address`` or start a local instance; True when this call started Ray."""
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'prune-harness[ray]'") from None
    if ray.is_initialized():
        return False
    ray.init(address=plan.config.execution.address, include_dashboard=False, log_to_driver=False)
    return True


def _failed_unit(plan: Plan, spec: Any, done: set[str], write: Callable[[Row], None], error: BaseException) -> None:
    from harness.cells import unit_cells
    from harness.tensorboard import Scalars
    from harness.unit import make_unit

    unit = make_unit(plan, spec, write, Scalars(None), Cache(None))
    for cell in unit_cells(unit, done):
        write(unit.error_row(cell, error))


def run(plan: Plan, done: set[str], write: Callable[[Row], None], display: Any, cache: Cache) -> None:
    """Every unit as a Ray task; ``display`` (:class:`harness.executor.Display`) counts finished units' cells."""
    import ray

    from harness.cells import unit_specs

    started = _start(plan)
    try:
        e = plan.config.execution
        task = ray.remote(num_cpus=e.cpus_per_task, max_retries=e.retries)(_unit_task)
        shared = ray.put(plan)
        threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
        pending = {task.remote(shared, spec, done, cache.root, threads): spec for spec in unit_specs(plan)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready[0])
            try:
                rows, counts = ray.get(ready[0])
            except Exception as error:  # the worker died more often than --retries allows
                _failed_unit(plan, spec, done, write, error)
            else:
                for row in rows:
                    write(row)
                cache.counts.update(counts)
            display.ticked(plan.cells_per_unit(plan.adapters[spec.adapter]), cell=False)
    finally:
        if started:
            ray.shutdown()
