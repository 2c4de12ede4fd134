"""The leaderboard CSV: one row per cell, written as each cell finishes, never half-written.

Each append rewrites the file to a temporary sibling and renames it over the
original under an exclusive lock, so a crash at any moment leaves either the old
or the new table, and two writers cannot interleave rows.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

COLUMNS = (
    "run_id",
    "model",
    "task",
    "adapter",
    "scorer",
    "pruner",
    "granularity",
    "options",
    "targets",
    "sparsity",
    "achieved_sparsity",
    "heads_kept",
    "heads_total",
    "seed",
    "metric",
    "score",
    "params",
    "nonzero_params",
    "gflops",
    "latency_ms",
    "speedup",
    "scoring_s",
    "train_s",
    "extras",
    "status",
    "error",
)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read(path: Path) -> Any:
    """The leaderboard as a DataFrame with the standard columns (empty if there is none yet)."""
    import pandas as pd

    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return frame.reindex(columns=[*COLUMNS, *[c for c in frame.columns if c not in COLUMNS]])


def append(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add rows atomically: lock, rewrite to a temporary file, fsync, rename over."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        new = pd.DataFrame([dict(row) for row in rows]).reindex(columns=list(COLUMNS))
        frame = pd.concat([read(path), new], ignore_index=True) if path.exists() else new
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as handle:
            frame.to_csv(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def summary(frame: Any) -> str:
    """Mean score (and mean speedup) per method and sparsity, over seeds, as readable text."""
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return "no successful cells"
    ok = ok.assign(method=ok["scorer"].astype(str) + "/" + ok["pruner"].astype(str))
    parts = []
    for (model, task, adapter), group in ok.groupby(["model", "task", "adapter"], sort=True):
        metric = group["metric"].iloc[0]
        table = group.pivot_table(index="method", columns="sparsity", values="score", aggfunc="mean")
        speed = group.pivot_table(index="method", columns="sparsity", values="speedup", aggfunc="mean")
        parts.append(f"{model} × {task} ({adapter}), {metric} by sparsity (mean over seeds):")
        parts.append(table.to_string(float_format=lambda v: f"{v:.4f}"))
        parts.append("speedup vs dense (measured):")
        parts.append(speed.to_string(float_format=lambda v: f"{v:.2f}x"))
    return "\n".join(parts)
