"""Grids that survive: SIGKILL and resume, retried failures, cache reuse, the Ray executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness import Scorer, hookimpl
from harness.cli import main

GRID = ["--plugins", "head-gradient,random,heads,finetune", "--sparsities", "0.25,0.5,0.75", "--seeds", "0,1",
        "--train-steps", "3", "--calib-examples", "16", "--latency-batch", "2", "--latency-tokens", "8",
        "--eval-limit", "32", "--no-progress"]


def rows(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "leaderboard.csv", keep_default_na=False)


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """What must not depend on interruptions: ids, status, quality (latency is measured anew)."""
    columns = ["run_id", "scorer", "pruner", "sparsity", "seed", "status", "score", "heads_kept", "params"]
    return frame[columns].sort_values("run_id").reset_index(drop=True)


def start(model: Path, out: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "HARNESS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "harness.cli", "bench", "--models", str(model), "--out", str(out), *GRID]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_rows(out: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "leaderboard.csv").exists() and len(rows(out)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} rows before the process ended or the timeout")


@pytest.mark.parametrize("kill_after", [1, 6])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(kill_after, tiny_model_dir, tmp_path):
    model = tiny_model_dir("bert")
    reference = start(model, tmp_path / "reference", tmp_path / "cache-reference")
    killed = start(model, tmp_path / "out", tmp_path / "cache")
    wait_for_rows(tmp_path / "out", kill_after, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    interrupted = rows(tmp_path / "out")
    assert kill_after <= len(interrupted) < 14, "killed mid-grid"
    assert reference.wait(timeout=600) == 0
    env = {"HARNESS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}  # as many threads: the same keys
    rerun = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--models", str(model), "--out",
                            str(tmp_path / "out"), *GRID], env={**os.environ, **env}, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(interrupted)} already done" in rerun.stdout
    final = rows(tmp_path / "out")
    assert len(final) == 14 and final["run_id"].is_unique and (final["status"] == "ok").all()
    pd.testing.assert_frame_equal(comparable(final), comparable(rows(tmp_path / "reference")))
    assert not list((tmp_path / "out").glob(".*.tmp")), "no temporary file is left behind"


class Flaky:
    """A third-party scorer that fails on its first call only."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def harness_scorers(self):
        def score(request):
            import torch

            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("transient failure")
            return torch.arange(12.0).reshape(3, 4)

        return [Scorer("flaky", "head", score)]


def test_a_failed_cell_is_retried_and_its_row_replaced(tiny_model_dir, tmp_path):
    argv = ["bench", "--isolation", "none", "--models", str(tiny_model_dir("bert")), "--out", str(tmp_path / "out"), *GRID[2:],
            "--plugins", "flaky,heads,finetune", "--no-baselines", "--seeds", "0"]
    flaky = Flaky()
    assert main(argv, extra=[flaky]) == 1
    first = rows(tmp_path / "out")
    assert list(first["status"]) == ["ok", "error", "error", "error"]
    assert main(argv, extra=[flaky]) == 0
    second = rows(tmp_path / "out")
    assert len(second) == 4 and (second["status"] == "ok").all() and second["run_id"].is_unique
    assert set(second["run_id"]) == set(first["run_id"])


def test_baselines_are_added_unless_switched_off(tiny_model_dir, tmp_path):
    common = ["bench", "--models", str(tiny_model_dir("bert")), "--sparsities", "0.5", "--train-steps", "2",
              "--calib-examples", "8", "--latency-batch", "2", "--latency-tokens", "8", "--eval-limit", "16",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a"), "--plugins", "taylor,unstructured"]) == 0
    assert set(rows(tmp_path / "a")["scorer"]) == {"none", "taylor", "magnitude", "random-weight"}
    assert main([*common, "--out", str(tmp_path / "b"), "--plugins", "taylor,unstructured", "--no-baselines"]) == 0
    assert set(rows(tmp_path / "b")["scorer"]) == {"none", "taylor"}


def test_ray_executor_gives_the_same_rows_as_the_local_one(tiny_model_dir, tmp_path):
    ray = pytest.importorskip("ray")
    model = tiny_model_dir("bert")
    grid = [*GRID, "--cache", str(tmp_path / "cache")]
    assert main(["bench", "--models", str(model), "--out", str(tmp_path / "local"), "--no-cache", *GRID]) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        argv = ["bench", "--models", str(model), "--out", str(tmp_path / "ray"), "--executor", "ray", *grid]
        assert main(argv) == 0
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(comparable(rows(tmp_path / "ray")), comparable(rows(tmp_path / "local")))
    assert len(list((tmp_path / "cache" / "models").glob("*.safetensors"))) == 2  # workers wrote the shared cache


def test_the_same_weights_installed_elsewhere_resume_the_grid(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Like the ``minilm`` alias resolving into a new venv: same name and bytes, new folder and file times."""
    import shutil

    from harness.cache import fingerprint_folder

    model = tiny_model_dir("bert")
    elsewhere = tmp_path / "other-venv" / model.name
    shutil.copytree(model, elsewhere, copy_function=shutil.copyfile)
    for file in elsewhere.iterdir():
        os.utime(file, ns=(1, 1))
    assert fingerprint_folder(str(elsewhere)) == fingerprint_folder(str(model))
    grid = [*GRID, "--seeds", "0", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    monkeypatch.chdir(model.parent)
    assert main(["bench", "--models", model.name, *grid]) == 0
    first = rows(tmp_path / "out")
    capsys.readouterr()
    monkeypatch.chdir(elsewhere.parent)
    assert main(["bench", "--models", model.name, *grid]) == 0
    assert f"0 ok, 0 failed, {len(first)} already done" in capsys.readouterr().out
    pd.testing.assert_frame_equal(rows(tmp_path / "out"), first)
    changed = elsewhere / "config.json"
    changed.write_text(changed.read_text().replace("}", ', "note": 1}', 1))
    assert fingerprint_folder(str(elsewhere)) != fingerprint_folder(str(model))
