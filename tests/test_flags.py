"""Row flags: results that look like numbers but are a constant guess or a run that did not learn."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import WORDS, tiny_tokenizer

from harness import Adapter, TrainResult, hookimpl, leaderboard
from harness.adaptation import training_flags
from harness.batching import Examples
from harness.cli import main
from harness.records import Split, TaskData

FAST = ["--train-steps", "3", "--calib-examples", "16", "--latency-batch", "2", "--latency-tokens", "8",
        "--eval-limit", "32", "--no-progress"]


def task(labels: tuple[int, ...], kind: str = "classification") -> TaskData:
    texts = tuple(f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i + 1) % len(WORDS)]}" for i in range(len(labels)))
    split = Split(texts, labels if kind == "classification" else ())
    names = ("no", "yes") if kind == "classification" else ()
    metric = "accuracy" if kind == "classification" else "perplexity"
    return TaskData(split, split, names, metric, kind=kind)


@pytest.mark.parametrize(
    ("labels", "loss", "expected"),
    [
        ((0, 1) * 50, 0.69, ("training-not-learned",)),  # balanced: the prior's entropy is ln 2 = 0.693
        ((0, 1) * 50, 0.95 * math.log(2) - 1e-6, ()),
        ((0, 1) * 50, 0.30, ()),
        ((0,) * 90 + (1,) * 10, 0.33, ("training-not-learned",)),  # 90/10: entropy 0.325, a guess's loss
        ((0,) * 90 + (1,) * 10, 0.20, ()),
        ((0, 1) * 50, float("nan"), ("training-diverged",)),
        ((0, 1) * 50, float("inf"), ("training-diverged",)),
        ((0, 1) * 50, None, ()),  # no steps ran, or a cache entry without the tail-mean loss: no verdict
        ((1,) * 20, 0.0, ()),  # one training class: its prior's entropy is 0, any loss would be "not learned"
    ],
)
def test_training_flags_against_the_label_prior(labels: tuple[int, ...], loss: float | None, expected: tuple) -> None:
    assert training_flags(loss, task(labels)) == expected


def test_training_flags_name_their_stage_and_skip_language_models() -> None:
    assert training_flags(0.7, task((0, 1) * 5), "recovery") == ("recovery-not-learned",)
    assert training_flags(9.0, task((0,) * 4, "causal-lm")) == ()
    assert training_flags(float("nan"), task((0,) * 4, "causal-lm")) == ("training-diverged",)


class ByToken(torch.nn.Module):
    """A classifier that predicts from the parity of the first word's id (or always class 0)."""

    def __init__(self, constant: bool) -> None:
        super().__init__()
        self.constant = constant

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        label = torch.zeros_like(input_ids[:, 1]) if self.constant else input_ids[:, 1] % 2
        return SimpleNamespace(logits=torch.nn.functional.one_hot(label, 2).float())


def test_constant_predictions_are_flagged(tmp_path: Path) -> None:
    feed = Examples(task((0, 1) * 8), tiny_tokenizer(tmp_path / "tok"))
    batches = feed.evaluation(None)
    stuck = feed.quality(ByToken(constant=True), batches)
    assert stuck.flags == ("constant-predictions",) and stuck.score == pytest.approx(0.5)
    varied = feed.quality(ByToken(constant=False), batches)
    assert varied.flags == () and 0.0 <= varied.score <= 1.0


class Stuck:
    """A third-party adapter that 'trains' into a constant classifier and reports a non-finite loss."""

    @hookimpl
    def harness_adapters(self):
        def train(request):
            with torch.no_grad():
                request.model.classifier.weight.zero_()
                request.model.classifier.bias.copy_(torch.tensor([5.0, -5.0]))
            return TrainResult(request.model.eval(), 0, request.steps, float("nan"))

        return [Adapter("stuck", train)]


def test_flags_reach_every_row_the_summary_and_the_aggregate(capsys, tiny_model_dir, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["bench", "--isolation", "none", "--models", str(tiny_model_dir("bert")), "--plugins", "head-gradient,heads,stuck,finetune",
            "--no-baselines", "--sparsities", "0.5", "--seeds", "0", "--out", str(out), *FAST]
    assert main(argv, extra=[Stuck()]) == 0
    frame = leaderboard.read(out / "leaderboard.csv")
    stuck = frame[frame["adapter"] == "stuck"]
    assert len(stuck) == 2 and (stuck["status"] == "ok").all()
    assert set(stuck["flags"]) == {"at-chance;constant-predictions;training-diverged"}
    trained = frame[frame["adapter"] == "finetune"]  # 3 steps on a tiny model may not learn, but never diverge
    assert len(trained) == 2 and not trained["flags"].fillna("").str.contains("diverged").any()
    counts = leaderboard.flag_counts(frame)
    assert counts["training-diverged"] == 2 and counts["constant-predictions"] >= 2
    printed = capsys.readouterr().out
    assert "flagged rows in the leaderboard (see the flags column): " in printed and "training-diverged 2" in printed
    seeds = pd.read_csv(out / "leaderboard_seeds.csv")
    assert list(seeds[seeds["adapter"] == "stuck"]["flagged"]) == [1, 1]


def test_no_training_steps_give_no_training_flags(tiny_model_dir, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--plugins", "head-gradient,heads", "--no-baselines",
            "--sparsities", "0.5", "--seeds", "0", "--out", str(out), *FAST, "--train-steps", "0"]
    assert main(argv) == 0
    frame = leaderboard.read(out / "leaderboard.csv")
    assert len(frame) == 2 and not leaderboard.text_column(frame["flags"]).str.contains("training-").any()


def test_flag_columns_read_back_empty_are_text(recwarn) -> None:
    frame = pd.DataFrame({"flags": [float("nan"), float("nan")], "other": [1.0, 2.0]})
    assert leaderboard.flag_counts(frame) == {}
    assert list(leaderboard.text_column(frame["flags"])) == ["", ""]
    assert not [w for w in recwarn if "fill" in str(w.message)]


def test_overflowing_perplexity_is_infinite_and_flagged(monkeypatch, tmp_path: Path) -> None:
    from harness import batching, modeling

    monkeypatch.setattr(modeling, "token_losses", lambda model, batch: (torch.tensor([800.0]), torch.tensor([1])))
    assert batching.perplexity(torch.nn.Linear(1, 1), [object()]) == float("inf")
    blocks = batching.Blocks(task((0,) * 4, "causal-lm"), tiny_tokenizer(tmp_path / "tok"))
    assert blocks.quality(torch.nn.Linear(1, 1), [object()]) == batching.Quality(float("inf"), ("non-finite-perplexity",))
