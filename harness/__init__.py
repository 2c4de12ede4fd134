"""prune-harness: score, prune and adapt pretrained transformers, and benchmark it honestly.

``harness.run(...)`` runs a grid from Python. Plugins need only this package's public names: ``hookimpl``, the records in
:mod:`harness.records`, typed options (``Options``, ``option``), head surgery
in :mod:`harness.surgery`, the loss helpers in :mod:`harness.modeling` and
:mod:`harness.progress` (announce a long phase: ``with progress.phase(name, total) as step``).
Nothing heavy is imported here.
"""

from __future__ import annotations

import pluggy

from harness import progress
from harness.options import Options, option
from harness.records import (
    Adapter,
    Batch,
    EvalRequest,
    Granularity,
    Pruner,
    PruneRequest,
    Scorer,
    ScoreRequest,
    Split,
    Task,
    TaskData,
    TaskRequest,
    TrainRequest,
    TrainResult,
)

__version__ = "0.1.0"
hookimpl = pluggy.HookimplMarker("harness")


def run(config: object = None, **settings: object) -> object:
    """Run a bench grid from Python; see :func:`harness.api.run` (imported on call: ``import harness`` stays light)."""
    from harness.api import run as run_grid

    return run_grid(config, **settings)  # type: ignore[arg-type]

__all__ = [
    "Adapter",
    "Batch",
    "EvalRequest",
    "Granularity",
    "Options",
    "PruneRequest",
    "Pruner",
    "ScoreRequest",
    "Scorer",
    "Split",
    "Task",
    "TaskData",
    "TaskRequest",
    "TrainRequest",
    "TrainResult",
    "hookimpl",
    "option",
    "progress",
    "run",
]
