"""Models that run the same kernels are timed once per unit: their rows share the columns and say whose they are."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from conftest import tiny_model
from test_decoder_bench import FAST

from harness import measures
from harness.cli import main
from harness.surgery import remove_heads

pytestmark = pytest.mark.usefixtures("one_thread")


def test_zeros_keep_the_signature_and_removal_casts_and_hooks_do_not():
    model = tiny_model("bert")
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in zeroed.parameters():
            parameter.mul_(torch.rand_like(parameter) > 0.5)
    signature = measures.kernel_signature(model)
    assert signature is not None and measures.kernel_signature(zeroed) == signature
    assert measures.kernel_signature(remove_heads(copy.deepcopy(model), [[0, 1, 2]] * 3)) != signature
    assert measures.kernel_signature(copy.deepcopy(model).to(torch.bfloat16)) != signature
    hooked = copy.deepcopy(model)
    hooked.bert.encoder.layer[0].output.register_forward_hook(lambda module, args, output: output * 0)
    assert measures.kernel_signature(hooked) is None


def test_a_shared_signature_is_timed_once():
    model = tiny_model("bert")
    inputs = measures.latency_input(model, 2, 8)
    shared = measures.SharedTimings()
    first, source = shared.columns("dense", model, model, inputs, {}, 0)
    again, reused = shared.columns("cell", model, copy.deepcopy(model), inputs, {}, 0)
    assert source is None and reused == "dense" and again == first and first["speedup"] == 1.0
    other, fresh = shared.columns("heads", model, remove_heads(copy.deepcopy(model), [[0, 1, 2]] * 3), inputs, {}, 0)
    assert fresh is None and other["model_mb"] < first["model_mb"]


def test_unstructured_rows_reuse_the_dense_timing_and_structured_rows_are_timed(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), *FAST, "--plugins", "magnitude,unstructured,head-gradient,heads",
            "--sparsities", "0.25,0.5", "--out", str(out)]
    assert main(argv) == 0
    rows = pd.read_csv(out / "leaderboard.csv")
    assert (rows["status"] == "ok").all(), rows["error"].tolist()
    extras = rows["extras"].fillna("{}").map(lambda text: json.loads(text) if text else {})
    dense = rows[rows["pruner"] == "none"].iloc[0]
    weights = rows["granularity"] == "weight"
    assert weights.sum() >= 4  # magnitude and the random baseline at both sparsities
    assert (extras[weights].map(lambda e: e.get("latency_from")) == dense["run_id"]).all()
    assert (rows.loc[weights, "latency_ms"] == dense["latency_ms"]).all() and (rows.loc[weights, "speedup"] == 1.0).all()
    heads = rows[rows["granularity"] == "head"]
    assert len(heads) == 4  # head-gradient and the random baseline at both sparsities
    first = heads.groupby("sparsity").head(1).index  # the first model of each head count is timed itself
    assert extras[first].map(lambda e: "latency_from" not in e).all()
    assert not (heads["latency_ms"] == dense["latency_ms"]).any()


def test_flops_from_one_row_equal_the_whole_batch_count():
    """Rows of the latency input are full length, so one row times the batch is the count of the whole batch."""
    model = tiny_model("bert")
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight[:5] = 0  # zeros count as skipped
    inputs = measures.latency_input(model, 4, 8)
    total = 0

    def count(module, args, output):
        nonlocal total
        total += 2 * int(module.weight.count_nonzero()) * (output.numel() // module.out_features)

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.inference_mode():
        model(**inputs)
    for handle in handles:
        handle.remove()
    heads = sum(layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert measures.forward_flops(model, inputs) == total + 4 * 4 * 8 * 8 * head_dim * heads
