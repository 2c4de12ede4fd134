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
from harness.errors import UsageError

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
    "chance",
    "params",
    "nonzero_params",
    "gflops",
    "latency_ms",
    "latency_iqr_ms",
    "speedup",
    "decode_ms_b1",
    "decode_speedup_b1",
    "decode_ms_b8",
    "decode_speedup_b8",
    "model_mb",
    "peak_mem_mb",
    "device",
    "dtype",
    "scoring_s",
    "prune_s",
    "updates_weights",
    "train_s",
    "recovery",
    "schedule",
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
    """An exclusive lock on the leaderboard's folder itself: writers exclude each other and no lock file is left
    beside the results (a lock file removed after use would race with a writer that opened it)."""
    import os

    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


INTEGER_COLUMNS = ("heads_kept", "heads_total", "seed", "params", "nonzero_params", "trainable_params")


def read(path: Path) -> Any:
    """The leaderboard as a DataFrame with the standard columns (empty if there is none yet).

    A file that is not a readable leaderboard is a :class:`UsageError`: it is
    never overwritten, since it holds what a user produced.
    """
    import pandas as pd

    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(COLUMNS))
    except (OSError, ValueError, pd.errors.ParserError) as error:  # unreadable, binary, broken quoting
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"cannot read leaderboard {path} ({first}); move it aside or choose another --out") from None
    missing = [column for column in ("run_id", "status") if column not in frame.columns]
    if missing:
        raise UsageError(f"{path} is not a harness leaderboard (no {', '.join(missing)} column); "
                         "move it aside or choose another --out")
    frame = frame.reindex(columns=[*COLUMNS, *[c for c in frame.columns if c not in COLUMNS]])
    return with_integers(with_schedule(frame))


def with_schedule(frame: Any) -> Any:
    """Pruned rows written before schedules existed were one shot: say so, so they group with the new ones."""
    pruned = text_column(frame["pruner"]).ne("none") & text_column(frame["pruner"]).ne("")
    frame["schedule"] = text_column(frame["schedule"]).astype(object)
    frame.loc[pruned & frame["schedule"].eq(""), "schedule"] = "one-shot"
    return frame


def with_integers(frame: Any) -> Any:
    """Count columns as nullable integers, so an error row (empty counts) does not turn 22713986 into 22713986.0."""
    import pandas as pd

    for column in INTEGER_COLUMNS:
        if column not in frame:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        present = values.dropna()
        if len(present) and not (present == present.round()).all():
            continue  # not counts after all: leave the column as it is
        frame[column] = values.astype("Int64")
    return frame


def append(path: Path, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Add rows atomically: lock, rewrite to a temporary file, fsync, rename over; the rows as the file holds them.

    A row whose run id is already there replaces the old row (a cell that failed
    before and was run again), so the table holds one row per cell; but an
    ``ok`` row is never replaced by an error row (another run finished that
    cell): the ``ok`` row stays and is returned in its place.
    """
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        new = pd.DataFrame([dict(row) for row in rows]).reindex(columns=list(COLUMNS))
        ids = new["run_id"].astype(str)
        if path.exists():
            old = read(path)
            finished = set(old.loc[old["status"] == "ok", "run_id"].astype(str))
            new = new[~((new["status"] != "ok") & ids.isin(finished))]
            frame = pd.concat([old[~old["run_id"].astype(str).isin(new["run_id"].astype(str))], new], ignore_index=True)
        else:
            frame = new
        frame = with_integers(frame)
        atomic.sweep(path.parent)  # a writer killed mid-rename left its temporary; we hold the lock now
        atomic.write(path, lambda temporary: frame.to_csv(temporary, index=False))
    stored = frame[frame["run_id"].astype(str).isin(set(ids))]
    return [{k: v for k, v in row.items() if not _missing(v)} for row in stored.to_dict("records")]


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or (not isinstance(value, (list, tuple, dict)) and bool(pd.isna(value)))


def summary(frame: Any) -> str:
    """Mean score (and mean speedup) per method and sparsity, over seeds (newest row per cell), as readable text."""
    import pandas as pd

    frame = current(frame)
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return "no successful cells"
    ok = ok.assign(method=ok["scorer"].astype(str) + "/" + ok["pruner"].astype(str))
    parts = []
    for (model, task, adapter, metric), group in ok.groupby(["model", "task", "adapter", "metric"], sort=True):
        table = group.pivot_table(index="method", columns="sparsity", values="score", aggfunc="mean")
        speed = group.pivot_table(index="method", columns="sparsity", values="speedup", aggfunc="mean")
        parts.append(f"{model} × {task} ({adapter}), {metric} by sparsity (mean over seeds):")
        parts.append(table.to_string(float_format=lambda v: f"{v:.4f}"))
        reference = pd.to_numeric(group["chance"], errors="coerce").dropna() if "chance" in group else []
        if len(reference):
            parts.append(f"chance ({'unigram model' if metric == 'perplexity' else 'best constant guess'}): "
                         f"{float(reference.iloc[0]):.4f}; rows at or below it are flagged at-chance")
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


def _flag_names(flags: Any) -> str:
    """The distinct flags of a group's rows, so a table names what is wrong instead of counting it."""
    return ";".join(sorted({flag for text in text_column(flags) for flag in text.split(";") if flag}))


AGGREGATE_KEYS = (
    "model", "task", "metric", "adapter", "scorer", "pruner", "granularity", "options", "targets", "recovery",
    "schedule", "sparsity", "device", "dtype",
)


def current(frame: Any) -> Any:
    """The newest row of each cell and metric: same model, task, metric, method, options, sparsity and seed.

    An older row of the same cell has another run id: other code (a plugin was
    edited) or another budget computed it. It stays in the file, which keeps
    everything a user produced, but is never averaged with the new one.
    """
    if frame.empty:
        return frame
    keys = frame[[k for k in (*AGGREGATE_KEYS, "seed") if k in frame]].astype("string").fillna("")
    return frame[~keys.duplicated(keep="last")]


def aggregate(frame: Any) -> Any:
    """One row per (model, task, metric, method, sparsity): mean, sd and count over seeds, dense reference beside it.

    Only the newest row of each cell counts (:func:`current`), and only if it is
    ``ok``; ``sd`` is the sample standard deviation (NaN for one seed).
    """
    import pandas as pd

    frame = current(frame)
    ok = frame[frame["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    keys = list(AGGREGATE_KEYS)
    for key in keys:
        if key != "sparsity":
            ok[key] = text_column(ok[key])
    grouped = ok.groupby(keys, sort=True, dropna=False)
    table = grouped.agg(
        score_mean=("score", "mean"),
        score_sd=("score", "std"),
        seeds=("seed", "nunique"),
        achieved_sparsity=("achieved_sparsity", "mean"),
        params=("params", "mean"),
        gflops=("gflops", "mean"),
        speedup_mean=("speedup", "mean"),
        speedup_sd=("speedup", "std"),
        flagged=("flags", lambda flags: int((text_column(flags) != "").sum())),
        flag_names=("flags", _flag_names),
        chance=("chance", "first"),
    ).reset_index()
    dense = table[(table["scorer"] == "none") & (table["pruner"] == "none")]
    on = ["model", "task", "adapter", "metric", "device", "dtype"]  # a bfloat16 row compares with bfloat16's dense
    dense = dense[[*on, "score_mean", "score_sd"]].rename(columns={"score_mean": "dense_mean", "score_sd": "dense_sd"})
    return table.merge(dense, on=on, how="left")


def write_aggregate(frame: Any, path: Path) -> None:
    """The seed aggregate as CSV, replaced atomically."""
    table = aggregate(frame)
    atomic.write(path, lambda temporary: table.to_csv(temporary, index=False))
