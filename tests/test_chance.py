"""Chance baselines: every row carries its task's trivial reference, and rows no better than it are flagged."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import WORDS, tiny_tokenizer

from harness import chance, leaderboard
from harness.batching import Blocks, Examples, block_batch, metric_value
from harness.cli import main
from harness.records import Split, TaskData

FAST = ["--train-steps", "3", "--calib-examples", "16", "--latency-batch", "2", "--latency-tokens", "8",
        "--eval-limit", "32", "--no-progress", "--isolation", "none"]


@pytest.mark.parametrize(
    ("metric", "labels", "expected"),
    [
        ("accuracy", [0, 0, 1], 2 / 3),
        ("accuracy", [1, 1, 1, 0, 2], 3 / 5),
        ("f1", [1, 1, 1, 0], 2 * 0.75 / 1.75),  # always "positive": precision 0.75, recall 1
        ("f1", [0, 0, 0, 1], 2 * 0.25 / 1.25),  # the positive class is rare, yet still the best constant for F1
        ("mcc", [0, 1, 1, 0, 1], 0.0),
    ],
)
def test_constant_prediction_is_the_best_constant_under_the_metric(metric: str, labels: list[int], expected: float) -> None:
    num_labels = max(labels) + 1
    assert chance.constant_prediction(metric, labels, num_labels) == pytest.approx(expected)
    assert max(metric_value(metric, labels, [c] * len(labels), num_labels) for c in range(num_labels)) == pytest.approx(expected)


def test_unigram_perplexity_by_hand() -> None:
    train = torch.tensor([[1, 1, 2]])
    batch = block_batch(torch.tensor([[3, 1, 2]]))  # the model predicts tokens 1 and 2 (the first has no context)
    counts = [1, 3, 2, 1]  # add-one over a vocabulary of 4
    expected = math.exp(-(math.log(3 / 7) + math.log(2 / 7)) / 2)
    assert sum(counts) == 7
    assert chance.unigram_perplexity(train, [batch], 4) == pytest.approx(expected)
    padded = {**batch, "attention_mask": torch.tensor([[1, 1, 0]])}  # a masked token is not predicted
    assert chance.unigram_perplexity(train, [padded], 4) == pytest.approx(7 / 3)


@pytest.mark.parametrize(
    ("metric", "score", "reference", "flagged"),
    [("accuracy", 0.5, 0.5, True), ("accuracy", 0.51, 0.5, False), ("f1", 0.7, 0.8, True),
     ("perplexity", 900.0, 850.0, True), ("perplexity", 30.0, 850.0, False), ("accuracy", 0.1, None, False),
     ("accuracy", float("nan"), 0.5, False)],
)
def test_at_chance_direction_follows_the_metric(metric: str, score: float, reference: float | None, flagged: bool) -> None:
    assert chance.at_chance(metric, score, reference) is flagged


def test_reference_per_task_kind(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    texts = tuple(f"{WORDS[i % len(WORDS)]} {WORDS[(5 * i + 2) % len(WORDS)]}" for i in range(40))
    labels = (0,) * 30 + (1,) * 10
    data = TaskData(Split(texts, labels), Split(texts, labels), ("no", "yes"), "accuracy")
    feed = Examples(data, tokenizer)
    assert chance.reference(data, feed, feed.evaluation(None), 0) == pytest.approx(0.75)
    lm = TaskData(Split(texts, ()), Split(texts[:20], ()), (), "perplexity", max_length=8, kind="causal-lm")
    blocks = Blocks(lm, tokenizer)
    value = chance.reference(lm, blocks, blocks.evaluation(None), len(tokenizer))
    assert 1.0 < value < len(tokenizer)  # a unigram model beats the uniform guess on text it was counted on
    external = TaskData(Split(texts, labels), Split(texts, labels), ("no", "yes"), "acc", evaluate=lambda r: {"acc": 1.0})
    assert chance.reference(external, feed, [], 0) is None


def test_rows_carry_chance_and_flag_rows_at_or_below_it(tiny_model_dir, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--plugins", "head-gradient,heads", "--sparsities", "0.5",
            "--seeds", "0", "--out", str(out), *FAST]
    assert main(argv) == 0
    frame = leaderboard.read(out / "leaderboard.csv")
    assert len(frame) == 3 and (frame["status"] == "ok").all()
    # the built-in synthetic task's evaluation labels (the first 32): the best constant guess's accuracy
    from harness_plugins.synthetic import generate

    expected = chance.constant_prediction("accuracy", list(generate()["validation"].labels[:32]), 2)
    assert frame["chance"].tolist() == pytest.approx([expected] * 3, abs=1e-6)
    flagged = leaderboard.text_column(frame["flags"]).str.contains("at-chance")
    assert (flagged == (frame["score"] <= frame["chance"])).all()
    seeds = pd.read_csv(out / "leaderboard_seeds.csv")
    assert seeds["chance"].tolist() == pytest.approx([expected] * 3, abs=1e-6)


@pytest.mark.parametrize(
    ("metric", "lower"),
    [("perplexity", True), ("wikitext/word_perplexity", True), ("wikitext/bits_per_byte", True),
     ("lambada_openai/perplexity,none", True), ("lambada_openai/acc,none", False), ("accuracy", False), ("mcc", False)],
)
def test_lower_is_better_knows_external_metric_names(metric: str, lower: bool) -> None:
    from harness.records import lower_is_better

    assert lower_is_better(metric) is lower
    assert chance.at_chance(metric, 10.0, 5.0) is lower
