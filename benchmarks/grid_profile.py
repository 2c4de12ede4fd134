"""Where a grid's wall time goes: exclusive seconds per kind of phase, from the phases the harness announces.

The harness announces what it is doing as nested phases (a unit, its fine-tune,
a scoring pass, a cell, the cell's evaluation, latency and decode timing, a
recovery, a plugin's own loops such as L0 gate training). This runs a grid
through ``harness.run`` (progress bar off, units in their child processes as
usual, which relay their phases) and sums, per kind of phase, the time spent in
it and not in a phase nested inside it, so the kinds add up to the run's wall
time; "other" is time outside any phase (planning, loading, writing rows).

    OMP_NUM_THREADS=1 python benchmarks/grid_profile.py --plugins all --sparsities 0.5

Takes the arguments of ``harness bench``. Numbers only: nothing is asserted.
"""

from __future__ import annotations

import re
import sys
import time
from collections import defaultdict

KINDS = (  # (pattern on a phase name, kind); the first that matches names it
    (r" · ", "unit setup (load model, tokenize, cache)"),
    (r"^fine-tune", "fine-tune"),
    (r"^dense$", "dense cell (rest)"),
    (r"^scoring (\S+)", "scoring {0}"),
    (r"^evaluation$", "evaluation"),
    (r"^latency timing$", "latency timing (prefill)"),
    (r"^decode timing", "decode timing"),
    (r"^recovery", "recovery training"),
    (r"^[^/ ]+/[^@ ]+@", "cell (mask, surgery, FLOPs, memory, rest)"),
)


def kind(name: str) -> str:
    for pattern, label in KINDS:
        match = re.search(pattern, name)
        if match:
            return label.format(*match.groups())
    return name  # a plugin's own phase (e.g. L0 gate training), by its name


class Profile:
    """Exclusive seconds per kind: a phase's elapsed time minus that of the phases that ended inside it."""

    def __init__(self) -> None:
        self.exclusive: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self.nested: dict[tuple[str, ...], float] = defaultdict(float)  # time of child phases, by parent path

    def listen(self, event: str, phases: tuple) -> None:
        if event != "end" or not phases:
            return
        path = tuple(p.name for p in phases)
        ended = phases[-1]
        inner = self.nested.pop(path, 0.0)
        self.exclusive[kind(ended.name)] += max(0.0, ended.elapsed - inner)
        self.count[kind(ended.name)] += 1
        if len(path) > 1:
            self.nested[path[:-1]] += ended.elapsed


def main(argv: list[str]) -> None:
    from harness import progress
    from harness.api import run
    from harness.cli import _config, build_parser

    args = build_parser().parse_args(["bench", *argv])
    config = _config(args).replace(progress=False)
    profile = Profile()
    start = time.perf_counter()
    with progress.listening(profile.listen):
        result = run(config, command="benchmarks/grid_profile.py")
    wall = time.perf_counter() - start
    print(result.summary())
    print(f"\nwall {wall:.1f} s for {result.cells} cells ({wall / max(result.cells, 1):.1f} s a cell)")
    spent = sum(profile.exclusive.values())
    table = sorted(profile.exclusive.items(), key=lambda item: -item[1])
    for name, seconds in [*table, ("other (outside any phase)", max(0.0, wall - spent))]:
        print(f"{seconds:9.1f} s {100 * seconds / wall:5.1f}%  {profile.count.get(name, 0):5d}x  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
