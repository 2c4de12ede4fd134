"""The command line: bad input is one line on stderr and exit 2; a grid runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import error_of

from harness import Scorer, devices, hookimpl
from harness.cli import main
from harness.leaderboard import COLUMNS

FAST = ["--train-steps", "3", "--calib-examples", "16", "--latency-batch", "2", "--latency-tokens", "8",
        "--eval-limit", "32", "--no-progress", "-o", "l0-gates.steps=5"]
HEADS = ["--plugins", "head-gradient,random,l0-gates,heads,finetune"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["bench", "--plugins", "nope"], "unknown plugin 'nope'"),
        (["bench", "--plugins", "sst2"], "it is a task"),
        (["bench", "--tasks", "nope"], "unknown task 'nope'"),
        (["bench", "--sparsities", "1.0"], "sparsity 1.0 is outside [0, 1)"),
        (["bench", "--sparsities", "-0.1"], "outside [0, 1)"),
        (["bench", "--sparsities", "half"], "sparsity 'half' is not a number"),
        (["bench", "--seeds", "1.5"], "seed '1.5' is not an integer"),
        (["bench", "-o", "heads.nope=1"], "has no option 'nope'"),
        (["bench", "-o", "heads.min_heads_per_layer=x"], "takes a int"),
        (["bench", "-o", "head-gradient.normalize=maybe"], "takes true or false"),
        (["bench", "-o", "novalue"], "PLUGIN.KEY=VALUE"),
        (["bench", "-o", "heads.scope=diagonal"], "option heads.scope takes one of global, layer, not 'diagonal'"),
        (["bench", "-o", "l0-gates.lambda_mode=sometimes"], "takes one of target, fixed"),
        (["bench", "--data-dir", "/no/such/folder"], "is not a folder"),
        (["bench", "--bogus"], "unrecognized arguments"),
        (["bench", "--targets", "attention,mlp"], "--targets: unknown weight group 'mlp'"),
        (["bench", "--plugins", "magnitude,heads"], "scorer 'magnitude' (weight) has no pruner of its granularity"),
        (["nothing"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv: list[str], expected: str) -> None:
    assert expected in error_of(capsys, argv)


def test_missing_data_file(capsys, tmp_path: Path) -> None:
    line = error_of(capsys, ["bench", "--tasks", "sst2", "--data-dir", str(tmp_path)])
    assert "data file not found" in line and "sst2/train.tsv" in line


def test_missing_label_column(capsys, tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,target\na,0\nb,1\n")
    (tmp_path / "task.yaml").write_text(
        "name: t\ntrain: train.csv\nvalidation: train.csv\ntext_columns: [text]\nlabel_column: label\nlabel_names: [a, b]\n"
    )
    line = error_of(capsys, ["bench", "--tasks", str(tmp_path / "task.yaml")])
    assert "no column 'label'" in line and "text, target" in line


def test_model_folder_without_config(capsys, tmp_path: Path) -> None:
    assert "has no config.json" in error_of(capsys, ["bench", "--models", str(tmp_path)])


def test_unknown_model_in_a_subprocess_has_no_traceback() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "bench", "--models", "no-such-org/no-such-model"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "unknown model 'no-such-org/no-such-model'" in done.stderr


def test_list_shows_every_builtin_with_its_distribution(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for role, name in [("scorer", "head-gradient"), ("scorer", "random"), ("pruner", "heads"),
                       ("adapter", "finetune"), ("task", "sst2"), ("task", "synthetic")]:
        line = next(line for line in out.splitlines() if f" {name} " in f" {line} " and line.startswith(role))
        assert "prune-harness" in line


def test_bench_end_to_end_on_a_tiny_model(capsys, tiny_model_dir, tmp_path: Path) -> None:
    model = tiny_model_dir("bert")
    out = tmp_path / "out"
    argv = ["bench", "--models", str(model), "--sparsities", "0.25,0.5", "--seeds", "0", "1", "--out", str(out), *FAST,
            *HEADS]
    assert main(argv) == 0
    frame = pd.read_csv(out / "leaderboard.csv")
    assert tuple(frame.columns) == COLUMNS
    assert len(frame) == 2 * (1 + 3 * 2)  # seeds × (dense + scorers × sparsities)
    assert (frame["status"] == "ok").all()
    dense = frame[frame["sparsity"] == 0]
    assert set(dense["scorer"]) == {"none"} and (dense["heads_kept"] == 12).all()
    pruned = frame[frame["sparsity"] == 0.5]
    assert (pruned["heads_kept"] == 6).all() and (pruned["params"] < dense["params"].iloc[0]).all()
    assert frame["run_id"].is_unique
    assert set(frame[frame["scorer"] == "l0-gates"]["options"]) == {'l0-gates{"steps":5}'}
    assert frame[frame["scorer"] == "random"]["options"].isna().all(), "only options a user changed are shown"
    assert frame["latency_ms"].gt(0).all() and frame["speedup"].gt(0).all()
    assert "accuracy by sparsity" in capsys.readouterr().out
    assert main(argv) == 0  # the same command again: every cell is done, nothing runs, nothing is lost
    assert "0 ok, 0 failed, 14 already done; fine-tunes run 0" in capsys.readouterr().out
    assert pd.read_csv(out / "leaderboard.csv").equals(frame)
    elsewhere = [*argv[: argv.index("--out")], "--out", str(tmp_path / "other"), *argv[argv.index("--out") + 2 :]]
    assert main(elsewhere) == 0  # a new leaderboard, the same cache: fine-tunes and scores are reused
    assert "fine-tunes run 0 (cached 2), scoring passes run 0 (cached 8)" in capsys.readouterr().out
    reused = pd.read_csv(tmp_path / "other" / "leaderboard.csv")
    assert list(reused["run_id"]) == list(frame["run_id"]) and list(reused["score"]) == list(frame["score"])
    seeds = pd.read_csv(out / "leaderboard_seeds.csv")
    assert set(seeds["seeds"]) == {2} and len(seeds) == 1 + 3 * 2
    assert (seeds["dense_mean"] == dense["score"].mean()).all()


class Exploding:
    """A third-party scorer that fails: it must cost only its own cells."""

    @hookimpl
    def harness_scorers(self):
        def score(request):
            raise RuntimeError("scorer exploded")

        return [Scorer("exploding", "head", score)]


def test_failing_plugin_costs_only_its_cells(capsys, tiny_model_dir, tmp_path: Path) -> None:
    model = tiny_model_dir("bert")
    out = tmp_path / "out"
    argv = ["bench", "--isolation", "none", "--models", str(model), "--sparsities", "0.5", "--out", str(out), *FAST,
            "--plugins", "exploding,head-gradient,random,l0-gates,heads,finetune"]
    assert main(argv, extra=[Exploding()]) == 1
    frame = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
    failed = frame[frame["status"] == "error"]
    assert list(failed["scorer"]) == ["exploding"]
    assert "RuntimeError: scorer exploded" in failed["error"].iloc[0]
    assert set(frame[frame["status"] == "ok"]["scorer"]) == {"none", "head-gradient", "l0-gates", "random"}
    assert "failed: exploding/heads" in capsys.readouterr().out


class Counting:
    """Scorers that count their calls: a plain one runs once per unit, a learning one once per sparsity."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    @hookimpl
    def harness_scorers(self):
        import torch

        def make(name: str):
            def score(request):
                self.calls.append((name, request.sparsity))
                request.log("probe/value", 3.5, 1)
                return torch.rand(3, 4, generator=torch.Generator().manual_seed(request.seed))

            return score

        return [Scorer("once", "head", make("once")), Scorer("per-budget", "head", make("per-budget"), per_sparsity=True)]


def test_scores_are_computed_once_or_once_per_sparsity(tiny_model_dir, tmp_path: Path) -> None:
    counting = Counting()
    argv = ["bench", "--isolation", "none", "--models", str(tiny_model_dir("bert")), "--plugins", "once,per-budget", "--no-baselines",
            "--sparsities", "0.25,0.5,0.75", "--out", str(tmp_path / "out"), *FAST]
    assert main(argv, extra=[counting]) == 0
    assert sorted(counting.calls) == [("once", None), ("per-budget", 0.25), ("per-budget", 0.5), ("per-budget", 0.75)]
    frame = pd.read_csv(tmp_path / "out" / "leaderboard.csv", keep_default_na=False)
    extras = [json.loads(text) for text in frame[frame["scorer"] != "none"]["extras"]]
    own = {json.dumps({k: v for k, v in e.items() if k not in ("device_name", "latency_from")}) for e in extras}
    assert own == {'{"calib_examples": 16, "eval_examples": 32, "probe/value": 3.5}'}  # --eval-limit 32: what the metric is over
    assert all(e["device_name"] == devices.describe("cpu") for e in extras)


def test_tensorboard_scalars_per_run(tiny_model_dir, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tb"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--plugins", "l0-gates", "--sparsities", "0.5",
            "--out", str(tmp_path / "out"), "--tensorboard", str(board), *FAST]
    assert main(argv) == 0
    tags: dict[str, list[str]] = {}
    for run in board.iterdir():
        events = EventAccumulator(str(run))
        events.Reload()
        tags[run.name.split("-")[0]] = events.Tags()["scalars"]
    assert len(tags["finetune"]) == 1 and tags["finetune"] == ["train/loss"]
    assert {"l0/task_loss", "l0/expected_l0", "l0/open_gates", "l0/lambda1"} <= set(tags["l0"])
    assert {"eval/accuracy", "eval/heads_kept", "eval/latency_ms"} <= set(tags["cell"])


class Retraining:
    """Scorers that change the weights of their copy: kept only when ``updates_model`` says so."""

    @hookimpl
    def harness_scorers(self):
        import torch

        def always(label: int):
            def score(request):
                with torch.no_grad():  # a classifier that always answers `label`
                    request.model.classifier.weight.zero_()
                    request.model.classifier.bias.copy_(torch.tensor([5.0, -5.0]) * (1 - 2 * label))
                return torch.rand(3, 4, generator=torch.Generator().manual_seed(0))

            return score

        return [Scorer("answers-0", "head", always(0), updates_model=True),
                Scorer("answers-1", "head", always(1), updates_model=True),
                Scorer("discards", "head", always(1))]


def test_a_scorer_that_updates_the_model_gets_its_model_pruned(tiny_model_dir, tmp_path: Path) -> None:
    from harness_plugins import synthetic

    from harness import TaskRequest

    argv = ["bench", "--isolation", "none", "--models", str(tiny_model_dir("bert")), "--plugins", "answers-0,answers-1,discards",
            "--sparsities", "0.5", "--out", str(tmp_path / "out"), *FAST]
    assert main(argv, extra=[Retraining()]) == 0
    frame = pd.read_csv(tmp_path / "out" / "leaderboard.csv").set_index("scorer")
    labels = synthetic.load(TaskRequest(None, 0, {})).validation.labels[:32]
    assert labels.count(0) != 16
    assert frame.loc["answers-0", "score"] == pytest.approx(labels.count(0) / 32)
    assert frame.loc["answers-1", "score"] == pytest.approx(labels.count(1) / 32)
    assert frame.loc["discards", "heads_kept"] == 6 and frame.loc["answers-0", "heads_kept"] == 6
