"""Speed and memory columns: prefill spread, decode ms per token with the key/value cache, model and peak memory."""

from __future__ import annotations

import inspect
import sys

import pandas as pd
import pytest
import torch
from test_language_model import LM_FAST, decoder_dir

from harness import measures
from harness.cli import main
from harness.surgery import remove_heads

pytestmark = pytest.mark.usefixtures("one_thread")
NEW = 6


def tiny_lm(tmp_path, arch: str = "llama"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(decoder_dir(tmp_path / arch, arch)).eval()


def test_timing_is_the_median_and_the_interquartile_range():
    timing = measures.Timing.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert timing.median_ms == 3.0 and timing.iqr_ms == pytest.approx(4.0 - 2.0)
    assert measures.Timing.of([7.0]) == measures.Timing(7.0, 0.0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decode_feeds_one_token_a_step_through_the_cache(arch, tmp_path):
    model = tiny_lm(tmp_path, arch)
    ids = measures.decode_prompt(model, 2, tokens=10, new_tokens=NEW)
    assert ids.shape == (2, 10 + NEW)
    with torch.inference_mode():
        per_token, length = measures.decode_ms(model, ids, NEW)
        # the cached steps give the logits a full forward gives: the cache was used, not recomputed wrongly
        full = model(input_ids=ids).logits[:, -1]
        prompt = measures.cache_of(model(input_ids=ids[:, :-1], use_cache=True))
        argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        last = model(input_ids=ids[:, -1:], use_cache=True, **{argument: prompt}).logits[:, -1]
    assert per_token > 0 and length == 10 + NEW
    torch.testing.assert_close(last, full, rtol=1e-4, atol=1e-4)


def test_the_prompt_is_cut_to_the_model_positions(tmp_path):
    model = tiny_lm(tmp_path, "gpt2")  # 64 learned positions
    assert measures.decode_prompt(model, 1, tokens=128, new_tokens=NEW).shape == (1, 64)


def test_a_pruned_decoder_decodes_with_fewer_heads_and_is_timed_against_the_dense_one(tmp_path):
    dense = tiny_lm(tmp_path)
    pruned = remove_heads(tiny_lm(tmp_path), [[0, 1, 2], [3, 4, 5]])  # a key/value group of each layer goes
    ids = measures.decode_prompt(dense, 8, tokens=12, new_tokens=NEW)
    dense_step, step = measures.dense_and_pruned_decode(dense, pruned, ids, NEW, repeats=3)
    assert dense_step.median_ms > 0 and step.median_ms > 0 and step.iqr_ms >= 0
    assert measures.model_bytes(pruned) < measures.model_bytes(dense)


def test_model_bytes_count_tied_weights_once():
    from torch import nn

    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    model.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
    assert measures.model_bytes(model) == 10 * 4 * 4 + 3 * 8


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak resident set is read from /proc")
def test_inference_memory_grows_with_the_activations():
    from torch import nn

    model = nn.Sequential(nn.Linear(256, 4096), nn.ReLU(), nn.Linear(4096, 256)).eval()
    small = measures.inference_memory(model, {"input": torch.randn(8, 256)})
    big = measures.inference_memory(model, {"input": torch.randn(2048, 256)})  # 32 MB activations of 4096 floats
    assert small is not None and big is not None
    assert big > 24 * 2**20 > small


def test_bench_rows_have_decode_and_memory_columns(tmp_path):
    model_dir = decoder_dir(tmp_path / "llama", "llama")
    from test_language_model import sentences

    (tmp_path / "corpus.txt").write_text("\n\n".join(sentences()) + "\n")
    task = tmp_path / "lm.yaml"
    task.write_text("kind: causal-lm\ntrain: corpus.txt\nvalidation_fraction: 0.2\nmax_length: 32\n")
    out = tmp_path / "out"
    argv = ["bench", "--models", str(model_dir), "--tasks", str(task), "--plugins", "head-gradient,heads",
            "--sparsities", "0.5", "--no-baselines", "--decode-tokens", "4", "--train-steps", "0", *LM_FAST,
            "--out", str(out)]
    assert main(argv) == 0
    rows = pd.read_csv(out / "leaderboard.csv").set_index("pruner")
    assert (rows["status"] == "ok").all(), rows["error"].tolist()
    for column in ("decode_ms_b1", "decode_ms_b8", "latency_iqr_ms", "model_mb", "peak_mem_mb"):
        assert (rows[column] >= 0).all() and rows[column].notna().all(), column
    assert (rows[["decode_ms_b1", "decode_ms_b8", "model_mb"]] > 0).all().all()
    assert rows.loc["none", "decode_speedup_b1"] == 1.0 and rows.loc["heads", "decode_speedup_b8"] > 0
    assert rows.loc["heads", "model_mb"] < rows.loc["none", "model_mb"]


def test_classification_rows_have_no_decode_columns_and_decode_tokens_are_checked(tiny_model_dir, tmp_path, capsys):
    from conftest import error_of

    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--plugins", "magnitude,unstructured", "--sparsities", "0.5",
            "--train-steps", "2", "--calib-examples", "8", "--latency-batch", "2", "--latency-tokens", "8",
            "--eval-limit", "16", "--no-baselines", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    rows = pd.read_csv(out / "leaderboard.csv")
    assert rows["decode_ms_b1"].isna().all() and rows["decode_speedup_b8"].isna().all()
    assert (rows["model_mb"] > 0).all()
    line = error_of(capsys, ["bench", "--decode-tokens", "-1", "--out", str(tmp_path / "o")])
    assert line == "harness: error: --decode-tokens must be >= 0, not -1"
