"""The leaderboard CSV: one row per cell, written as each cell finishes, never half-written.

Each append rewrites the file to a temporary sibling and renames it over the
original under an exclusive lock, so a crash at any moment leaves either the old
or the new table, and two writers cannot interleave rows.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from harness import atomic

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
    "recovery",
    "trainable_params",
    "adapter_config",
    "erank_q",
    "erank_k",
    "erank_v",
    "extras",
    "flags",
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
    """Add rows atomically: lock, rewrite to a temporary file, fsync, rename over.

    A row whose run id is already there replaces the old row (a cell that failed
    before and was run again), so the table holds one row per cell.
    """
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        new = pd.DataFrame([dict(row) for row in rows]).reindex(columns=list(COLUMNS))
        if path.exists():  # a retried cell replaces its earlier (failed) row: one row per run id
            old = read(path)
            frame = pd.concat([old[~old["run_id"].astype(str).isin(new["run_id"].astype(str))], new], ignore_index=True)
        else:
            frame = new
        atomic.sweep(path.parent)  # a writer killed mid-rename left its temporary; we hold the lock now
        atomic.write(path, lambda temporary: frame.to_csv(temporary, index=False))


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


def text_column(values: Any) -> Any:
    """A column as text with missing values empty: a column read back all-empty is float NaN."""
    return values.astype("string").fillna("").astype(str)


def flag_counts(frame: Any) -> dict[str, int]:
    """How many rows carry each flag (a row's flags are ``;``-separated)."""
    from collections import Counter

    if "flags" not in frame:
        return {}
    counts = Counter(flag for text in text_column(frame["flags"]) for flag in text.split(";") if flag)
    return dict(sorted(counts.items()))


AGGREGATE_KEYS = (
    "model", "task", "adapter", "scorer", "pruner", "granularity", "options", "targets", "recovery", "sparsity",
)


def aggregate(frame: Any) -> Any:
    """One row per (model, task, method, sparsity): mean, sd and count over seeds, dense reference beside it.

    Only ``ok`` rows count; ``sd`` is the sample standard deviation (NaN for one seed).
    """
    import pandas as pd

    ok = frame[frame["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    keys = list(AGGREGATE_KEYS)
    for key in keys:
        if key != "sparsity":
            ok[key] = text_column(ok[key])
    grouped = ok.groupby(keys, sort=True, dropna=False)
    table = grouped.agg(
        metric=("metric", "first"),
        score_mean=("score", "mean"),
        score_sd=("score", "std"),
        seeds=("seed", "nunique"),
        achieved_sparsity=("achieved_sparsity", "mean"),
        params=("params", "mean"),
        gflops=("gflops", "mean"),
        speedup_mean=("speedup", "mean"),
        speedup_sd=("speedup", "std"),
        flagged=("flags", lambda flags: int((text_column(flags) != "").sum())),
    ).reset_index()
    dense = table[(table["scorer"] == "none") & (table["pruner"] == "none")]
    dense = dense[["model", "task", "adapter", "score_mean", "score_sd"]].rename(
        columns={"score_mean": "dense_mean", "score_sd": "dense_sd"}
    )
    return table.merge(dense, on=["model", "task", "adapter"], how="left")


def write_aggregate(frame: Any, path: Path) -> None:
    """The seed aggregate as CSV, replaced atomically."""
    table = aggregate(frame)
    atomic.write(path, lambda temporary: table.to_csv(temporary, index=False))
