"""The example third-party scorer works end to end through real entry-point metadata.

No pip: a ``*.dist-info`` folder written from the example's own ``pyproject.toml``
sits on ``PYTHONPATH`` next to the example's source, which is exactly what an
installed distribution looks like to ``importlib.metadata`` and pluggy.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from conftest import REPO

EXAMPLE = REPO / "examples" / "harness-entropy-scorer"
SCORER = "attention-entropy"


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment in which the example is an installed distribution with its ``harness`` entry points."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("site")
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = project["entry-points"]["harness"]
    lines = ["[harness]", *(f"{name} = {target}" for name, target in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    path = [str(site), str(EXAMPLE), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # tiny models; a busy CI box thrashes otherwise
    }


def run(args: list[str], env: dict[str, str], cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_list_shows_the_example_with_its_distribution(example_env: dict[str, str]) -> None:
    result = run([sys.executable, "-m", "harness.cli", "list"], example_env)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["scorer", SCORER, "head", "harness-entropy-scorer", "0.1.0"] in rows, result.stdout


def test_bench_runs_the_example_scorer(example_env: dict[str, str], tiny_model_dir, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "harness.cli", "bench", "--plugins", SCORER, "--models", str(tiny_model_dir("bert")),
        "--tasks", "synthetic", "--train-steps", "2", "--calib-examples", "8", "--latency-batch", "2",
        "--latency-tokens", "8", "--eval-limit", "16", "--sparsities", "0.5", "--no-progress", "--out", str(out),
    ]
    result = run(args, example_env)
    assert result.returncode == 0, result.stdout + result.stderr
    with (out / "leaderboard.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pruned = [row for row in rows if row["scorer"] == SCORER]
    assert len(pruned) == 1, rows
    row = pruned[0]
    assert row["status"] == "ok", row["error"]
    assert (row["pruner"], float(row["sparsity"])) == ("heads", 0.5)
    assert (int(float(row["heads_kept"])), int(float(row["heads_total"]))) == (6, 12)


def test_example_own_tests_pass(example_env: dict[str, str]) -> None:
    """The example's suite runs with its own ``pyproject.toml`` as rootdir, as its authors would run it."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    result = run(args, example_env, cwd=EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
