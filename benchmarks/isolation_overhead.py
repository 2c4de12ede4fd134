"""What process isolation costs: the same grid with ``--isolation process`` and ``none``, timed in alternation.

A unit's child is forked from a fork server that has imported torch and
transformers, so the cost should be a fixed few seconds per run (starting the
server) and per unit, independent of the grid's compute. This times a small
real grid (MiniLM, the default methods, a short budget) several times in each
mode, alternating, and prints the median wall times, their difference and
ratio, and the ratio that difference gives on a default grid of ``--grid-s``
seconds (``harness bench`` with no arguments: one unit). Run it from a
non-editable install: ``python benchmarks/isolation_overhead.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = dict(progress=False, sparsities=[0.5], train_steps=5, calib_examples=32, eval_limit=64, latency_batch=2,
            latency_tokens=16, options=["l0-gates.steps=5"])
RUN = "import harness, sys; harness.run(isolation=sys.argv[1], out=sys.argv[2], **{grid})"


def timed(mode: str, folder: Path, index: int) -> float:
    """Wall seconds of one fresh run (its own cache and output, so nothing is reused)."""
    env = {**os.environ, "HARNESS_CACHE": str(folder / f"cache-{mode}-{index}")}
    argv = [sys.executable, "-c", RUN.format(grid=GRID), mode, str(folder / f"{mode}-{index}")]
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid-s", type=float, default=540.0, help="wall seconds of the default grid on this machine")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"none": [], "process": []}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.repeats):
            for mode in ("none", "process") if index % 2 == 0 else ("process", "none"):
                walls[mode].append(timed(mode, Path(tmp), index))
    medians = {mode: statistics.median(values) for mode, values in walls.items()}
    extra = medians["process"] - medians["none"]
    for mode, values in walls.items():
        print(f"{mode:8} median {medians[mode]:6.2f} s  runs {', '.join(f'{v:.2f}' for v in values)}")
    print(f"isolation costs {extra:+.2f} s per run of one unit: ratio {medians['process'] / medians['none']:.3f} "
          f"on this grid, {(args.grid_s + extra) / args.grid_s:.4f} on a {args.grid_s:.0f} s default grid")


if __name__ == "__main__":
    main()
