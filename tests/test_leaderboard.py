"""Leaderboard writes are atomic: concurrent writers never interleave or lose rows."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pandas as pd

from harness import leaderboard


def _writer(path: str, worker: int, rows: int) -> None:
    for i in range(rows):
        leaderboard.append(Path(path), [{"run_id": f"{worker}-{i}", "model": "m", "score": i / 7, "status": "ok"}])


def test_concurrent_writers_keep_every_row(tmp_path: Path) -> None:
    path = tmp_path / "leaderboard.csv"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), w, 15)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    frame = pd.read_csv(path)
    assert tuple(frame.columns) == leaderboard.COLUMNS
    assert sorted(frame["run_id"]) == sorted(f"{w}-{i}" for w in range(4) for i in range(15))
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.csv"], "no lock file either: the folder is locked"


def test_rows_keep_column_order_and_values(tmp_path: Path) -> None:
    path = tmp_path / "lb.csv"
    leaderboard.append(path, [{"status": "ok", "run_id": "a", "score": 0.5, "error": ""}])
    leaderboard.append(path, [{"run_id": "b", "status": "error", "error": "ValueError: x, y"}])
    frame = leaderboard.read(path)
    assert list(frame.columns) == list(leaderboard.COLUMNS)
    assert list(frame["run_id"]) == ["a", "b"]
    assert frame["score"].iloc[0] == 0.5
    assert frame["error"].iloc[1] == "ValueError: x, y"


def test_summary_averages_over_seeds() -> None:
    rows = [
        {"model": "m", "task": "t", "adapter": "a", "scorer": "s", "pruner": "p", "sparsity": 0.5,
         "seed": seed, "metric": "accuracy", "score": score, "speedup": 1.2, "status": "ok"}
        for seed, score in enumerate([0.7, 0.9])
    ]
    text = leaderboard.summary(pd.DataFrame(rows))
    assert "0.8000" in text and "1.20x" in text
