"""``--device`` and ``--dtype``: resolved and checked up front, recorded in rows and run ids, used by every stage."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import error_of, tiny_model
from test_decoder_bench import FAST
from test_language_model import LM_FAST, decoder_dir, sentences

from harness import devices, modeling
from harness.cli import main
from harness.records import TrainRequest

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN = {"weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_a_one_line_error(capsys, tmp_path):
    line = error_of(capsys, ["bench", "--device", "cuda", "--out", str(tmp_path / "o")])
    assert line.startswith("harness: error: --device cuda: this machine has no CUDA device (torch ")
    assert error_of(capsys, ["bench", "--device", "cuda:1", "--out", str(tmp_path / "o")]).startswith(
        "harness: error: --device cuda:1: this machine has no CUDA device")
    assert error_of(capsys, ["bench", "--device", "tpu", "--out", str(tmp_path / "o")]) == (
        f"harness: error: --device 'tpu': not a device (use {devices.DEVICE_HELP})")
    for bad in ("cuda:", "cuda:x", "cpu:0"):  # an index that is no number is caught here, not by torch later
        assert error_of(capsys, ["bench", "--device", bad, "--out", str(tmp_path / "o")]) == (
            f"harness: error: --device {bad!r}: not a device (use {devices.DEVICE_HELP})")
    assert error_of(capsys, ["bench", "--dtype", "float8", "--out", str(tmp_path / "o")]) == (
        "harness: error: --dtype 'float8': not a dtype (use auto, float32, bfloat16, float16)")


def test_auto_resolves_to_a_device_this_machine_has():
    expected = "cuda" if torch.cuda.is_available() else "mps" if devices._mps_available() else "cpu"
    assert devices.resolve_device("auto") == expected
    assert devices.resolve_device("CPU") == "cpu"


def test_the_default_is_auto_and_rows_name_what_it_resolved_to(tiny_model_dir, tmp_path):
    from harness.config import Budget

    assert (Budget().device, Budget().dtype) == ("auto", "auto")
    rows = _bench(["bench", "--models", str(tiny_model_dir("bert")), *FAST, "--plugins", "magnitude,unstructured",
                   "--sparsities", "0.5", "--no-baselines"], tmp_path / "auto")
    device = devices.resolve_device("auto")
    assert set(rows["device"]) == {device} and set(rows["dtype"]) == {devices.resolve_dtype("auto", device)}


def test_auto_dtype_is_bfloat16_only_where_the_device_computes_it_natively(monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: ("sse2", "avx512f", "avx512_bf16"))
    assert devices.resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(devices, "cpu_flags", lambda: ("sse2", "avx2"))
    assert devices.resolve_dtype("auto", "cpu") == "float32" and devices.resolve_dtype("auto", "mps") == "float32"
    assert devices.resolve_dtype("float16", "cpu") == "float16"


def test_float32_is_the_model_itself_and_a_reduced_dtype_is_a_cast_copy():
    model = tiny_model("bert")
    assert devices.Placement("cpu", "float32").served(model, copy=True) is model
    served = devices.Placement("cpu", "bfloat16").served(model, copy=True)
    assert served is not model and next(served.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the model to score and prune is left as it was


def test_autocast_runs_matmuls_in_the_dtype_and_float32_does_not():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with devices.Placement("cpu", "bfloat16").autocast():
        assert layer(x).dtype == torch.bfloat16
    with devices.Placement("cpu", "float32").autocast():
        assert layer(x).dtype == torch.float32
    moved = devices.Placement("cpu").batch({"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "kept"})
    assert moved["input_ids"].device.type == "cpu" and moved["note"] == "kept"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_shared_loop_trains_under_autocast(dtype):
    """float16 steps go through a gradient scaler; both learn as float32 does (autocast's weight cache, which
    would freeze the weights cast at the first step, is off), with float32 parameters."""
    from conftest import batch_for

    model = tiny_model("bert")
    batch = {**batch_for(model, batch_size=4, tokens=6), "labels": torch.tensor([0, 1, 0, 1])}
    with torch.inference_mode():
        before = float(modeling.per_example_loss(model, batch).mean())
    request = TrainRequest(model, [batch] * 60, 60, 3e-3, 0, TRAIN)
    with devices.Placement("cpu", dtype).autocast():
        assert (modeling._loss_scaler(list(model.parameters())) is not None) == (dtype == "float16")
        steps, final = modeling.train_adamw(request)
    assert steps == 60 and before > 0.5 and final < 0.05, (before, final)  # float32: 0.6952 -> 0.0107
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _bench(argv: list[str], out) -> pd.DataFrame:
    assert main([*argv, "--out", str(out)]) == 0
    return pd.read_csv(out / "leaderboard.csv")


def test_a_bfloat16_grid_gives_ok_rows_that_name_their_device_and_dtype(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("bert"))
    argv = ["--models", model, *FAST, "--plugins", "head-gradient,heads,taylor-neuron,neurons,magnitude,unstructured",
            "--sparsities", "0.5", "--no-baselines"]
    half = _bench(["bench", *argv, "--dtype", "bfloat16", "--device", "cpu"], tmp_path / "bf16")
    assert (half["status"] == "ok").all(), half["error"].tolist()
    assert set(half["device"]) == {"cpu"} and set(half["dtype"]) == {"bfloat16"} and len(half) == 4
    assert half["score"].between(0, 1).all() and (half["latency_ms"] > 0).all()
    assert half["extras"].str.contains('"device_name"').all()
    full = _bench(["bench", *argv, "--dtype", "float32"], tmp_path / "fp32")
    assert set(full["dtype"]) == {"float32"} and set(full["device"]) == {devices.resolve_device("auto")}
    assert not set(full["run_id"]) & set(half["run_id"])  # another dtype is another result
    assert (half["model_mb"] < full["model_mb"] * 0.6).all()  # served in 2 bytes a weight, not 4


def test_a_bfloat16_decoder_grid_times_decode_with_the_cache(tmp_path):
    model_dir = decoder_dir(tmp_path / "llama", "llama")
    (tmp_path / "corpus.txt").write_text("\n\n".join(sentences()) + "\n")
    task = tmp_path / "lm.yaml"
    task.write_text("kind: causal-lm\ntrain: corpus.txt\nvalidation_fraction: 0.2\nmax_length: 32\n")
    rows = _bench(["bench", "--models", str(model_dir), "--tasks", str(task), "--plugins", "head-gradient,heads",
                   "--sparsities", "0.5", "--no-baselines", "--decode-tokens", "4", "--train-steps", "0", *LM_FAST,
                   "--dtype", "bfloat16"], tmp_path / "out")
    assert (rows["status"] == "ok").all(), rows["error"].tolist()
    assert (rows["dtype"] == "bfloat16").all() and (rows["decode_ms_b1"] > 0).all() and (rows["score"] > 1).all()
