"""The one real-model test: all-MiniLM-L6-v2 (from its PyPI package) on a slice of real SST-2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA
from harness_plugins import glue

from harness import TaskRequest, batching, modeling, surgery
from harness.cli import main
from harness.models import MINILM_SHA256, load_classifier, resolve, sha256_of

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="needs ../shared/data")


def test_minilm_resolves_to_the_checked_package() -> None:
    source = resolve("minilm")
    assert sha256_of(Path(source.location) / "model.safetensors") == MINILM_SHA256


def test_masked_equals_removed_and_reloads_on_real_minilm(tmp_path: Path) -> None:
    task = glue.load(TaskRequest(SHARED_DATA, 0, {"max_length": 64}))
    model, tokenizer = load_classifier(resolve("minilm"), task.label_names, seed=0)
    batch = batching.batches(tokenizer, task.validation, 16, 64, range(16))[0]
    keep = torch.rand(6, 12, generator=torch.Generator().manual_seed(3)) > 0.5
    keep[:, 0] = True
    with surgery.mask_heads(model, keep):
        masked = modeling.logits(model.eval(), batch)
    surgery.remove_heads(model, keep)
    removed = modeling.logits(model, batch)
    assert (masked - removed).abs().max() <= 1e-4
    assert surgery.head_geometry(model).total_heads == int(keep.sum())
    surgery.save_pruned(model, tmp_path / "pruned", base_model="minilm")
    reloaded = surgery.load_pruned(tmp_path / "pruned")
    assert (modeling.logits(reloaded, batch) - removed).abs().max() <= 1e-5


def test_bench_on_minilm_and_a_slice_of_sst2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    status = main([
        "bench", "--tasks", "sst2", "--data-dir", str(SHARED_DATA), "--sparsities", "0.5", "--seeds", "0",
        "--train-steps", "60", "--eval-limit", "300", "--calib-examples", "64",
        "--latency-batch", "8", "--latency-tokens", "64", "--out", str(out), "--no-progress",
        "-o", "l0-gates.steps=40", "--plugins", "head-gradient,l0-gates,heads,taylor-neuron,neurons",
    ])
    assert status == 0
    frame = pd.read_csv(out / "leaderboard.csv").set_index("scorer")
    assert set(frame.index) == {"none", "head-gradient", "l0-gates", "random", "taylor-neuron", "random-neuron"}
    neurons = frame.loc["taylor-neuron"]
    assert neurons["achieved_sparsity"] == 0.5 and neurons["params"] < frame.loc["none", "params"]
    assert neurons["score"] > frame.loc["random-neuron", "score"] - 0.05
    assert frame.loc["l0-gates", "heads_kept"] == 36, "the L0 gates fill the head budget exactly"
    dense = frame.loc["none"]
    assert dense["score"] > 0.70, "60 steps of fine-tuning learn SST-2 well above chance"
    assert dense["heads_kept"] == 72 and frame.loc["random", "heads_kept"] == 36
    assert frame.loc["head-gradient", "params"] < dense["params"]
    assert frame.loc["head-gradient", "score"] > 0.5
    assert frame.loc["head-gradient", "scoring_s"] > 0
