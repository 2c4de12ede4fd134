"""``harness bench`` end to end on a local tiny random LLaMA (grouped-query attention) with its own tokenizer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from harness_plugins import synthetic

from harness import TaskRequest
from harness.cli import main
from harness.models import ModelSource, load_classifier

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--tasks", "synthetic", "--train-steps", "5", "--calib-examples", "16", "--latency-batch", "2",
        "--latency-tokens", "16", "--eval-limit", "32", "--no-progress"]


def llama_tokenizer(directory: Path):
    """A word-level fast tokenizer shaped like LLaMA's: bos prepended, eos and unk, and no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    splits = synthetic.load(TaskRequest(None, 0, {}))
    words = sorted({w for text in splits.train.text_a + splits.validation.text_a for w in text.split()})
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = tmp_path / "tiny-llama"
    tokenizer = llama_tokenizer(directory)
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
        num_hidden_layers=3, intermediate_size=64, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)  # a base LM, as published
    return directory


def test_load_classifier_pads_a_decoder_with_eos(llama_dir):
    model, tokenizer = load_classifier(ModelSource("tiny", str(llama_dir)), ["negative", "positive"], seed=0)
    assert tokenizer.pad_token == "</s>" and model.config.pad_token_id == tokenizer.pad_token_id == 2
    assert tokenizer.padding_side == "right" and model.config.use_cache is False
    encoded = tokenizer(["the plot was dull", "great"], padding=True, return_tensors="pt")
    assert set(encoded) == {"input_ids", "attention_mask"}  # no token_type_ids for LLaMA's forward
    assert encoded["input_ids"][1].tolist()[-3:] == [2, 2, 2] and encoded["input_ids"][0, 0] == 1
    with torch.no_grad():
        alone = model(**tokenizer(["great"], return_tensors="pt")).logits
        padded = model(**encoded).logits[1:]
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)  # the classifier pools the last real token


def test_bench_on_a_local_llama(llama_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["bench", "--models", str(llama_dir), "--plugins", "head-gradient,random,heads,finetune",
            "--sparsities", "0.5", "--out", str(out), *FAST]
    assert main(argv) == 0
    rows = pd.read_csv(out / "leaderboard.csv")
    assert list(rows["status"]) == ["ok"] * 3, rows["error"].tolist()
    assert set(rows["scorer"]) == {"none", "head-gradient", "random"}
    assert rows["heads_total"].tolist() == [18] * 3
    assert sorted(rows["heads_kept"]) == [9, 9, 18]  # 0.5: three of six key/value groups, whole
    pruned = rows[rows["sparsity"] == 0.5]
    assert (pruned["params"] < rows.loc[rows["sparsity"] == 0, "params"].iloc[0]).all()


def test_an_impossible_gqa_budget_names_the_possible_sparsities(llama_dir, tmp_path, capsys):
    """Planning dry-runs the head pruner on the model's geometry: one line, exit 2, before any training."""
    out = tmp_path / "out"
    argv = ["bench", "--models", str(llama_dir), "--plugins", "random,heads,finetune", "--sparsities", "0.25",
            "--out", str(out), *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "possible sparsities: 0.167, 0.333, 0.500" in err[0]
    assert not (out / "leaderboard.csv").exists()
