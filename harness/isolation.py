"""Process isolation: each unit runs in a child process, so a plugin that crashes, exits or hangs costs its cells.

The child is forked from a ``forkserver`` that has imported torch and
transformers but never computed (forking a process that has run OpenMP threads
can hang; a fresh interpreter per unit would pay seconds of imports), and gets
the parent's environment. It tells the parent, before each step, which cells
depend on it: the fine-tune (all of the unit's), a scoring pass (the cells
that use those scores), a cell (itself). Rows come back over a pipe and the
parent writes them; so do the phases it announces (:mod:`harness.progress`),
at most every half second but for starts and ends, when the parent listens.
If the child dies (a signal, ``os._exit``, an uncaught ``SystemExit``) or a
step outlasts ``--cell-timeout`` (phase updates do not reset it), the parent writes error
rows saying what happened for the cells of that step only, and starts a new
child for the rest of the unit (the fine-tune comes from the cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from typing import Any, Callable

from harness import progress
from harness.cache import Cache
from harness.errors import UsageError
from harness.planning import Plan

Row = dict[str, Any]
POLL_S = 0.2


def _not_shipped(request: Any) -> Any:
    raise RuntimeError("a task is loaded once, by the parent process")


def shippable(plan: Plan) -> Plan:
    """The plan as a child gets it: loaded task data, task loaders left behind (they may be closures)."""
    plan.all_code()  # identities come from the real loaders, before they are left behind
    tasks = [(dataclasses.replace(task, load=_not_shipped), data) for task, data in plan.tasks]
    return dataclasses.replace(plan, tasks=tasks, code=dict(plan.code))


def check_picklable(plan: Plan) -> None:
    """Fail before any work when a plugin cannot travel to a child process."""
    import pickle

    try:
        pickle.dumps(shippable(plan))
    except Exception as error:
        raise UsageError(f"--isolation process needs plugins that can be pickled ({type(error).__name__}: "
                         f"{str(error).splitlines()[0]}); run with --isolation none") from None


class _Pipe:
    """The child's reporter: every step, row and tick goes to the parent, and the phases it listens to."""

    def __init__(self, conn: Any, cache: Cache) -> None:
        self.conn, self.cache = conn, cache

    def phase(self, label: str, rows: list[Row], cell: bool = False) -> None:
        self.conn.send(("phase", label, rows, dict(self.cache.counts), cell))

    def progress(self, event: progress.Event, phases: tuple[progress.Phase, ...]) -> None:
        self.conn.send(("progress", event, phases))

    def tick(self, label: str) -> None:
        self.conn.send(("tick", label))

    def row(self, row: Row) -> None:
        self.conn.send(("row", row))


class _Fd:
    """One of the parent's file descriptors, duplicated into the child as it is pickled (a fork server's
    children would otherwise write to the server's stdout/stderr, not the parent's current ones)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        from multiprocessing import reduction

        return (_attach, (reduction.DupFd(self.fd),))


def _attach(duplicate: Any) -> int:
    return duplicate.detach()


def _adopt(streams: tuple[int, int]) -> None:
    """Make the child's stdout and stderr the parent's."""
    for target, fd in zip((1, 2), streams):
        (sys.stdout if target == 1 else sys.stderr).flush()
        os.dup2(fd, target)
        os.close(fd)


def changed_code(plan: Plan, core: str) -> list[str]:
    """What code differs from what the parent hashed into the run ids (sources edited during the run)."""
    from harness import identity

    changed = ["harness"] if identity.core_code() != core else []
    records = [*plan.adapters, plan.recovery, *(r for method in plan.methods for r in method),
               *plan.granularities.values()]
    for record in records:  # tasks ran in the parent, with the code it hashed
        if record is not None and identity.of(record) != plan.code_of(record):
            changed.append(record.name)
    return sorted(set(changed))


def child_main(conn: Any, plan: Plan, spec: Any, skip: frozenset[str], root: Any, threads: int | None, core: str,
               environ: dict[str, str], streams: tuple[int, int], listen: bool = False) -> None:
    """A child's whole life: the unit's cells not in ``skip``, then its cache counters and an end message.

    (The parent counts the cells that were already done; the child skips them silently.) ``listen``: the
    parent shows phases, so the child sends them (throttled).
    """
    os.setsid()  # its own process group: stopping it stops whatever a plugin started too
    _adopt(streams)
    os.environ.clear()  # the parent's, not the fork server's (variables set since it started)
    os.environ.update(environ)
    from harness.cells import run_unit as run
    from harness.tensorboard import Scalars
    from harness.unit import make_unit

    changed = changed_code(plan, core)
    if changed:  # results would carry ids of code that did not compute them
        conn.send(("abort", f"code changed since this run started ({', '.join(changed)}); run the command again"))
        return
    if threads:
        import torch

        torch.set_num_threads(threads)
    cache = Cache(root)
    pipe = _Pipe(conn, cache)
    scalars = Scalars(plan.config.execution.tensorboard)
    try:
        with progress.listening(progress.throttled(pipe.progress)) if listen else contextlib.nullcontext():
            run(make_unit(plan, spec, pipe.row, scalars, cache), set(), pipe, skip)
    finally:
        scalars.close()
    conn.send(("end", dict(cache.counts)))
    conn.close()


def _death(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"worker died: signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"worker died: signal {-code}"
    return f"worker exited with status {code} before finishing"


@dataclasses.dataclass
class _Attempt:
    """What the parent knows of one child: the step it is in, the rows of that step, its counters."""

    label: str = "start"
    pending: list[Row] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    ended: bool = False
    aborted: str = ""  # why the child refused to start


def _handle(message: tuple, attempt: _Attempt, write: Callable[[Row], None], written: set[str], display: Any,
            unit: Any) -> None:
    from harness.cells import unit_label

    kind = message[0]
    if kind == "progress":  # not a step: the step's timeout runs on
        progress.relay(message[1], message[2])
    elif kind == "phase":
        _, attempt.label, rows, attempt.counts, cell = message
        attempt.pending = [row for row in rows if row["run_id"] not in written]
        attempt.started = time.monotonic()
        display.step(f"{unit_label(unit)}: {attempt.label}", cell)
    elif kind == "row":
        write(message[1])
        written.add(str(message[1]["run_id"]))
    elif kind == "tick":
        display.ticked(unit.plan.cells_per_unit(unit.adapter) if message[1] == "" else 1, cell=message[1] != "")
    elif kind == "end":
        attempt.counts, attempt.ended = message[1], True
    elif kind == "abort":
        attempt.aborted = message[1]


def _watch(process: Any, conn: Any, attempt: _Attempt, write: Callable[[Row], None], written: set[str],
           display: Any, unit: Any) -> str | None:
    """Relay the child's messages until it ends; why it failed (None when it finished its unit)."""
    timeout = unit.plan.config.execution.cell_timeout
    while True:
        if conn.poll(POLL_S):
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the child is gone; its exit code says how
                process.join()
                return None if attempt.ended else attempt.aborted or _death(process)
            _handle(message, attempt, write, written, display, unit)
            if attempt.ended:
                process.join()
                return None
        elif not process.is_alive():
            while conn.poll(0):
                try:
                    _handle(conn.recv(), attempt, write, written, display, unit)
                except (EOFError, OSError):
                    break
            return None if attempt.ended else attempt.aborted or _death(process)
        if timeout and time.monotonic() - attempt.started > timeout:  # also while phase updates keep coming
            _stop(process)
            return f"timed out after {timeout:g} s"


def _context() -> Any:
    """A forkserver with the heavy imports done once per run (spawn where there is no forkserver)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "harness.isolation", "harness.cells", "harness.unit"])
    return context


def _stop(process: Any) -> None:
    """Kill the child's process group (the child and what its plugins started), then reap the child."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # no group left (or not yet made): the child alone
        if process.is_alive():
            process.kill()
    process.join()


def _start(plan: Plan, spec: Any, skip: set[str], cache: Cache) -> tuple[Any, Any]:
    from harness import identity

    context = _context()
    receive, send = context.Pipe(duplex=False)
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    process = context.Process(target=child_main, name=f"harness-unit-seed{spec.seed}",
                              args=(send, shippable(plan), spec, frozenset(skip), cache.root, threads,
                                    identity.core_code(), dict(os.environ), (_Fd(1), _Fd(2)), progress.active()))
    process.start()
    send.close()  # the parent keeps only its reading end, so EOF means the child is gone
    return process, receive


def run_unit(plan: Plan, spec: Any, done: set[str], write: Callable[[Row], None], display: Any, cache: Cache) -> None:
    """One unit in child processes: a new child after each failed step, until every cell has a row.

    ``display`` (:class:`harness.executor.Display`) hears of each step (``step``) and finished cells (``ticked``).
    """
    from harness.cells import unit_cells
    from harness.tensorboard import Scalars
    from harness.unit import make_unit

    unit = make_unit(plan, spec, write, Scalars(None), Cache(None))  # identity rows only: nothing is loaded
    cache.counts["cells_skipped"] += plan.cells_per_unit(unit.adapter) - len(unit_cells(unit, done))
    written: set[str] = set()
    failed: set[str] = set()
    while unit_cells(unit, done | failed | written):
        attempt = _Attempt()
        process, conn = _start(plan, spec, done | failed | written, cache)
        try:
            why = _watch(process, conn, attempt, write, written, display, unit)
        finally:
            conn.close()
            _stop(process)  # also after a normal end: a plugin's stray subprocesses do not outlive the unit
        cache.counts.update(attempt.counts)
        if why is None:
            return
        lost = [row for row in attempt.pending if str(row["run_id"]) not in written]
        if not lost:  # it died outside any step (starting up): the unit's remaining cells are what it cost
            lost = [unit.row(cell) for cell in unit_cells(unit, done | failed | written)]
        for row in lost:
            write({**row, "status": "error", "error": f"{why} (during {attempt.label})"})
            failed.add(str(row["run_id"]))
        display.ticked(len(lost), cell=False)
