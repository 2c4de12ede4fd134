"""prune-harness: score, prune and adapt pretrained transformers, and benchmark it honestly.

Plugins need only this package's public names: ``hookimpl``, the records in
:mod:`harness.records`, head surgery in :mod:`harness.surgery` and the loss
helpers in :mod:`harness.modeling`. Nothing heavy is imported here.
"""

from __future__ import annotations

import pluggy

from harness.records import (
    Adapter,
    Batch,
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

__all__ = [
    "Adapter",
    "Batch",
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
]
