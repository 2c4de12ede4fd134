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


def test_summary_states_the_chance_reference_and_old_tables_without_it_still_summarise() -> None:
    rows = [
        {"model": "m", "task": "t", "adapter": "a", "scorer": "s", "pruner": "p", "sparsity": 0.5, "seed": 0,
         "metric": "accuracy", "score": 0.7, "speedup": 1.2, "status": "ok", "chance": chance}
        for chance in (0.625,)
    ]
    assert "chance (best constant guess): 0.6250" in leaderboard.summary(pd.DataFrame(rows))
    old = pd.DataFrame(rows).drop(columns="chance")
    assert "chance" not in leaderboard.summary(old) and "0.7000" in leaderboard.summary(old)


def test_aggregate_names_the_flags_and_keeps_the_chance_reference() -> None:
    base = {"model": "m", "task": "t", "adapter": "a", "scorer": "s", "pruner": "p", "granularity": "heads",
            "sparsity": 0.5, "metric": "accuracy", "speedup": 1.0, "status": "ok", "chance": 0.6}
    rows = [{**base, "run_id": "a", "seed": 0, "score": 0.55, "flags": "at-chance;constant-predictions"},
            {**base, "run_id": "b", "seed": 1, "score": 0.8, "flags": ""},
            {**base, "run_id": "c", "seed": 2, "score": 0.58, "flags": "at-chance"}]
    frame = pd.DataFrame(rows).reindex(columns=list(leaderboard.COLUMNS))
    table = leaderboard.aggregate(frame)
    assert table["flag_names"].tolist() == ["at-chance;constant-predictions"]
    assert table["flagged"].tolist() == [2] and table["chance"].tolist() == [0.6]
