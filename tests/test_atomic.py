"""Atomic writes: a failed or killed writer never leaves a half-written file, and its leftovers are swept."""

import os
import subprocess
import sys

import pytest

from harness import atomic, leaderboard


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "table.csv"
    atomic.write_text(path, "old\n")
    atomic.write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.csv"
    atomic.write_text(path, "old\n")

    def broken(temporary):
        temporary.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.write(path, broken)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_sweep_removes_only_temporaries_of_gone_processes(tmp_path):
    stale = tmp_path / f".leaderboard.csv.{dead_pid()}.tmp"
    mine = tmp_path / f".leaderboard.csv.{os.getpid()}.tmp"
    user = tmp_path / "notes.tmp"
    for entry in (stale, mine, user):
        entry.write_text("x")
    assert atomic.sweep(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and user.exists()


def test_sweep_with_an_age_guard_keeps_fresh_leftovers(tmp_path):
    stale = tmp_path / f".entry.safetensors.{dead_pid()}.tmp"
    stale.write_text("x")
    assert atomic.sweep(tmp_path, min_age_s=3600) == []
    old = stale.stat().st_mtime - 7200
    os.utime(stale, (old, old))
    assert atomic.sweep(tmp_path, min_age_s=3600) == [stale]


def test_appending_to_the_leaderboard_sweeps_a_killed_writers_temporary(tmp_path):
    path = tmp_path / "leaderboard.csv"
    leaderboard.append(path, [{"run_id": "a", "status": "ok"}])
    leftover = tmp_path / f".leaderboard.csv.{dead_pid()}.tmp"
    leftover.write_text("run_id\nhalf")
    leaderboard.append(path, [{"run_id": "b", "status": "ok"}])
    assert not leftover.exists()
    assert list(leaderboard.read(path)["run_id"]) == ["a", "b"]
