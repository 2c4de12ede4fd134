"""Recovery after pruning and adapter spectra in the grid: sparsity survives training and merging."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--train-steps", "3", "--calib-examples", "8", "--latency-batch", "2", "--latency-tokens", "8",
        "--eval-limit", "16", "--no-progress", "--no-baselines", "--sparsities", "0.5"]


def test_recovery_rows_keep_the_sparsity(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--out", str(out), *FAST,
            "--plugins", "head-gradient,heads,magnitude,global-unstructured,finetune",
            "--recover", "lora", "--recover-steps", "4", "-o", "lora.r=2", "-o", "lora.targets=all"]
    assert main(argv) == 0
    frame = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
    assert len(frame) == 1 + 2 * 2 and (frame["status"] == "ok").all()
    recovered = frame[frame["recovery"] != ""]
    assert len(recovered) == 2 and set(recovered["recovery"]) == {'lora{"r":2,"targets":"all"}'}
    for pruner in ("heads", "global-unstructured"):
        before = frame[(frame["pruner"] == pruner) & (frame["recovery"] == "")].iloc[0]
        after = frame[(frame["pruner"] == pruner) & (frame["recovery"] != "")].iloc[0]
        assert after["params"] == before["params"], "a physically pruned model stays small"
        assert after["achieved_sparsity"] == pytest.approx(before["achieved_sparsity"], abs=1e-9), "zeros kept"
        assert 0 < after["trainable_params"] < after["params"], "adapter parameters counted apart"
        assert json.loads(after["extras"])["recovery/trainable_params"] == after["trainable_params"]
    assert frame.loc[frame["pruner"] == "global-unstructured", "achieved_sparsity"].iloc[0] == pytest.approx(0.5)


def test_lora_unit_writes_spectra_and_rank_columns(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--out", str(out), *FAST,
            "--plugins", "random,heads,lora", "-o", "lora.r=4"]
    assert main(argv) == 0
    frame = pd.read_csv(out / "leaderboard.csv")
    assert set(frame["adapter"]) == {"lora"}
    config = json.loads(frame["adapter_config"].iloc[0])
    assert config["r"] == 4 and config["targets"] == "qv"
    assert frame["erank_q"].between(1, 4).all() and frame["erank_v"].between(1, 4).all()
    assert frame["erank_k"].isna().all(), "k was not adapted"
    assert (frame["trainable_params"] < frame["params"] / 5).all()
    spectra = pd.read_csv(next((out / "spectra").glob("*-spectra.csv")))
    assert set(spectra["kind"]) == {"q", "v"} and spectra["module"].nunique() == 2 * 3  # q, v in 3 layers
    nonzero = spectra[spectra["normalised"] > 1e-5].groupby("module").size()
    assert (nonzero <= 4).all(), "a rank-4 update has at most 4 nonzero singular values"
    assert next((out / "spectra").glob("*-spectra.png")).stat().st_size > 10_000
