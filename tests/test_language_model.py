"""Causal language modelling as a task: token blocks, perplexity, LM task files and ``harness bench`` on decoders."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from harness_plugins import synthetic
from test_decoder_bench import FAST, llama_tokenizer

from harness import TaskRequest, modeling
from harness.batching import Blocks, block_batch, perplexity, token_blocks
from harness.cli import main
from harness.data import load_task_file
from harness.errors import UsageError
from harness.records import Split, TaskData

pytestmark = pytest.mark.usefixtures("one_thread")
LM_FAST = [a for a in FAST if a not in ("--tasks", "synthetic")]


def sentences() -> list[str]:
    data = synthetic.load(TaskRequest(None, 0, {}))
    return list(data.train.text_a[:400])


def decoder_dir(directory: Path, arch: str) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = llama_tokenizer(directory)
    sizes = {
        "llama": dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=2,
                      intermediate_size=64, max_position_embeddings=64),
        "gpt2": dict(n_embd=48, n_head=6, n_layer=2, n_inner=64, n_positions=64),
    }[arch]
    config = AutoConfig.for_model(arch, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, **sizes)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


@pytest.fixture
def lm_task(tmp_path: Path) -> Path:
    text = sentences()
    paragraphs = ["\n".join(text[i : i + 4]) for i in range(0, len(text), 4)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(paragraphs) + "\n")
    spec = tmp_path / "reviews-lm.yaml"
    spec.write_text("kind: causal-lm\ntrain: corpus.txt\nvalidation_fraction: 0.2\nmax_length: 32\n")
    return spec


def test_token_blocks_join_texts_with_eos_and_drop_the_ragged_tail(tmp_path):
    tokenizer = llama_tokenizer(tmp_path / "tok")
    split = Split(("the plot was dull", "great acting", "not good"), ())
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in split.text_a]
    stream = [token for piece in ids for token in [*piece, tokenizer.eos_token_id]]
    blocks = token_blocks(tokenizer, split, 3)
    assert blocks.shape == (len(stream) // 3, 3)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert token_blocks(tokenizer, split, 100).flatten().tolist() == stream  # shorter than a block: one block


def test_perplexity_is_exp_of_the_models_own_mean_token_loss(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(decoder_dir(tmp_path / "m", "llama")).eval()
    blocks = torch.randint(3, model.config.vocab_size, (6, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=blocks, labels=blocks).loss
    assert perplexity(model, [block_batch(blocks[:3]), block_batch(blocks[3:])]) == pytest.approx(
        math.exp(float(reference)), rel=1e-5)
    with torch.no_grad():
        per_example = modeling.per_example_loss(model, block_batch(blocks))
    assert per_example.shape == (6,)
    assert float(per_example.mean()) == pytest.approx(float(reference), rel=1e-5)
    # untrained: about uniform over the vocabulary
    assert 0.5 * model.config.vocab_size < math.exp(float(reference)) < 2 * model.config.vocab_size


def test_padding_and_ignored_labels_do_not_count(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(decoder_dir(tmp_path / "m", "llama")).eval()
    ids = torch.randint(3, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    padded = {"input_ids": torch.cat([ids, torch.full((1, 4), 2)], 1), "attention_mask": torch.cat(
        [torch.ones(1, 10, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)], 1)}
    padded["labels"] = padded["input_ids"].clone()
    with torch.no_grad():
        losses, tokens = modeling.token_losses(model, padded)
        alone, count = modeling.token_losses(model, block_batch(ids))
    assert tokens.tolist() == count.tolist() == [9]
    torch.testing.assert_close(losses, alone, rtol=1e-5, atol=1e-5)


def test_lm_task_file_reads_paragraphs_and_splits_them_with_a_seed(lm_task):
    data = load_task_file(lm_task).load(TaskRequest(None, 0, {}))
    assert data.kind == "causal-lm" and data.metric == "perplexity" and data.max_length == 32
    assert len(data.train) == 80 and len(data.validation) == 20 and data.train.labels == ()
    assert data.train.text_a[0].count("\n") == 3  # one paragraph of four lines
    again = load_task_file(lm_task).load(TaskRequest(None, 5, {}))
    assert again.validation == data.validation


def test_lm_task_file_reads_a_table_column(tmp_path):
    (tmp_path / "t.csv").write_text("id,body\n" + "".join(f"{i},text number {i}\n" for i in range(10)))
    (tmp_path / "v.csv").write_text("id,body\n1,held out text\n")
    spec = tmp_path / "lm.yaml"
    spec.write_text("kind: causal-lm\ntrain: t.csv\nvalidation: v.csv\ntext_columns: body\n")
    data = load_task_file(spec).load(TaskRequest(None, 0, {}))
    assert data.train.text_a[3] == "text number 3" and data.validation.text_a == ("held out text",)


@pytest.mark.parametrize("body, message", [
    ("kind: regression\ntrain: c.txt\nvalidation: c.txt\n", "kind must be"),
    ("kind: causal-lm\ntrain: c.txt\nvalidation: c.txt\nmetric: accuracy\n", "perplexity is the metric"),
    ("train: c.csv\nvalidation: c.csv\ntext_columns: a\nlabel_column: b\nlabel_names: [x, y]\nmetric: perplexity\n",
     "perplexity is the metric"),
    ("kind: causal-lm\ntrain: c.csv\nvalidation: c.csv\ntext_columns: [a, b]\n", "one text column"),
])
def test_bad_lm_task_files_are_usage_errors(tmp_path, body, message):
    spec = tmp_path / "t.yaml"
    spec.write_text(body)
    with pytest.raises(UsageError, match=message):
        load_task_file(spec)


def test_task_data_checks_kind_and_metric():
    texts = Split(("a b c",), ())
    with pytest.raises(ValueError, match="perplexity"):
        TaskData(texts, texts, (), "accuracy", kind="causal-lm")
    with pytest.raises(ValueError, match="classification metric"):
        TaskData(Split(("a",), (0,)), Split(("b",), (1,)), ("n", "p"), "perplexity")


def test_blocks_feed_streams_seeded_full_batches(tmp_path, lm_task):
    data = load_task_file(lm_task).load(TaskRequest(None, 0, {}))
    feed = Blocks(data, llama_tokenizer(tmp_path / "tok"))
    first = [b["input_ids"] for b in feed.stream(5, 4, seed=3)]
    again = [b["input_ids"] for b in feed.stream(5, 4, seed=3)]
    assert len(first) == 5 and all(b.shape == (4, 32) for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert sum(len(b["input_ids"]) for b in feed.evaluation(None)) == len(feed.validation)
    assert sum(len(b["input_ids"]) for b in feed.evaluation(3)) == 3


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bench_scores_decoders_by_perplexity(arch, lm_task, tmp_path):
    model = decoder_dir(tmp_path / arch, arch)
    common = ["--models", str(model), "--tasks", str(lm_task), "--plugins", "head-gradient,heads,taylor-neuron,neurons",
              "--sparsities", "0.5", "--no-baselines", "--lr", "3e-3", *LM_FAST]
    runs = {}
    for steps in ("0", "60"):
        out = tmp_path / f"out-{steps}"
        assert main(["bench", *common, "--out", str(out), "--train-steps", steps, "--no-cache"]) == 0
        runs[steps] = pd.read_csv(out / "leaderboard.csv")
    rows = runs["60"]
    assert (rows["status"] == "ok").all(), rows["error"].tolist()
    assert set(rows["metric"]) == {"perplexity"}
    dense = rows.loc[rows["pruner"] == "none", "score"].iloc[0]
    untrained = runs["0"].loc[runs["0"]["pruner"] == "none", "score"].iloc[0]
    vocab = len(llama_tokenizer(tmp_path / "tok"))
    assert 0.5 * vocab < untrained < 2 * vocab  # a random LM is about uniform
    assert dense < 0.5 * untrained  # fine-tuning on the text lowers perplexity
    heads = rows[rows["pruner"] == "heads"].iloc[0]
    assert heads["heads_kept"] == heads["heads_total"] // 2 and 1 < heads["score"] < 0.5 * untrained
    neurons = rows[rows["pruner"] == "neurons"].iloc[0]
    assert neurons["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3) and neurons["params"] < rows["params"].max()


def test_an_encoder_on_a_language_modelling_task_is_a_usage_error(lm_task, tiny_model_dir, tmp_path, capsys):
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--tasks", str(lm_task), "--out", str(tmp_path / "o"),
            *LM_FAST]
    capsys.readouterr()  # what saving the fixture's model printed (transformers' shard progress) is not the command's
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a causal LM" in err[0] and "(bert)" in err[0]
