"""Bad input fails up front (issue 18): one line, exit 2, before any training or output.

Numeric ranges of the grid and of plugin options, task-file keys and names,
misspelled hooks, two distributions with one plugin name, and where ``datasets``
writes its Arrow copies of local task files.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
from conftest import error_of

from harness import Scorer, data, hookimpl, provenance
from harness.cli import main
from harness.errors import UsageError

FAST = ["--train-steps", "3", "--calib-examples", "16", "--latency-batch", "2", "--latency-tokens", "8",
        "--eval-limit", "32", "--no-progress", "--sparsities", "0.5", "--plugins", "random,heads", "--no-baselines"]


@pytest.fixture
def no_work(monkeypatch, tmp_path: Path):
    """Planning must stop bad input: reaching the point where output is written is a failure."""
    monkeypatch.chdir(tmp_path)  # the default --out, should a plan get that far

    def started(*args, **kwargs):
        raise AssertionError("the plan was accepted and work started")

    monkeypatch.setattr(provenance, "record", started)


@pytest.fixture
def tiny_task(tmp_path: Path) -> Path:
    """A task file with 10 training and 4 validation examples."""
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(10)))
    (tmp_path / "dev.csv").write_text("text,label\n" + "".join(f"dev {i},{i % 2}\n" for i in range(4)))
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ntrain: train.csv\nvalidation: dev.csv\ntext_columns: [text]\n"
                    "label_column: label\nlabel_names: [a, b]\n")
    return spec


# --------------------------------------------------------------------------- 6. numeric ranges


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--lr", "-1"], "--lr must be a finite number > 0, not -1"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--lr", "inf"], "--lr must be a finite number > 0"),
        (["--latency-batch", "0"], "--latency-batch must be >= 1, not 0"),
        (["--latency-tokens", "0"], "--latency-tokens must be >= 1, not 0"),
        (["--eval-limit", "-1"], "--eval-limit must be >= 1, not -1"),
        (["--eval-limit", "0"], "--eval-limit must be >= 1, not 0"),
        (["--calib-examples", "0"], "--calib-examples must be >= 1, not 0"),
        (["--train-steps", "-2"], "--train-steps must be >= 0, not -2"),
        (["--retries", "-1"], "--retries must be >= 0, not -1"),
        (["--cpus-per-task", "0"], "--cpus-per-task must be a finite number > 0, not 0"),
        (["--cell-timeout", "-1"], "--cell-timeout must be >= 0, not -1"),
        (["--recover-steps", "0"], "--recover-steps must be >= 1, not 0"),
        (["--seeds", "0", "0"], "seed 0 is given twice"),
        (["--seeds", "1,2,1"], "seed 1 is given twice"),
        (["--seeds", "-1"], "seed -1 is negative"),
        (["--sparsities", "0.5,0.5"], "sparsity 0.5 is given twice"),
    ],
)
def test_numbers_out_of_range_fail_while_planning(capsys, no_work, tiny_model_dir, flags, expected) -> None:
    argv = ["bench", "--models", str(tiny_model_dir("bert")), *FAST, *flags]
    assert expected in error_of(capsys, argv)


def test_batch_larger_than_the_training_split_names_the_task(capsys, no_work, tiny_model_dir, tiny_task) -> None:
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--tasks", str(tiny_task), *FAST, "--batch-size", "20"]
    assert "--batch-size 20 is larger than the training split of task tiny (10 examples)" in error_of(capsys, argv)


@pytest.mark.parametrize(
    "option, expected",
    [
        ("heads.min_heads_per_layer=-5", "option heads.min_heads_per_layer=-5 is below its minimum 1"),
        ("neurons.min_per_layer=0", "option neurons.min_per_layer=0 is below its minimum 1"),
        ("lora.dropout=1.5", "option lora.dropout=1.5 is above its maximum 1"),
        ("lora.r=0", "option lora.r=0 is below its minimum 1"),
        ("finetune.warmup_ratio=2", "option finetune.warmup_ratio=2 is above its maximum 1"),
        ("l0-gates.steps=0", "option l0-gates.steps=0 is below its minimum 1"),
        ("l0-gates.lr=0", "option l0-gates.lr=0 is below its minimum"),
        ("l0-gates.temperature=nan", "option l0-gates.temperature=nan is not a finite number"),
        ("synthetic.train_steps=-1", "option synthetic.train_steps=-1 is below its minimum 0"),
    ],
)
def test_plugin_option_ranges_are_checked_up_front(capsys, no_work, tiny_model_dir, option, expected) -> None:
    argv = ["bench", "--models", str(tiny_model_dir("bert")), *FAST, "-o", option]
    assert expected in error_of(capsys, argv)


def test_every_numeric_builtin_option_declares_a_range_that_holds_its_default() -> None:
    from harness.options import describe
    from harness.plugins import load_registry

    unbounded = {("random", "offset"), ("random-weight", "offset"), ("random-neuron", "offset"),
                 ("l0-gates", "init_log_alpha"), ("synthetic", "data_seed")}  # any integer / real is meaningful
    for item in load_registry():
        record = item.record
        for spec in describe(record):  # typed and dict options alike
            key, default, low, high = spec.name, spec.default, spec.low, spec.high
            if spec.type not in ("int", "float") or (record.name, key) in unbounded:
                continue
            assert spec.bounded, f"{record.name}.{key} declares no range"
            assert (low is None or default >= low) and (high is None or default <= high), f"{record.name}.{key}"


# --------------------------------------------------------------------------- 7. task files


def _task_file(tmp_path: Path, extra: str, name: str = "t") -> Path:
    (tmp_path / "d.csv").write_text("text,label\na,0\nb,1\n")
    spec = tmp_path / "t.yaml"
    spec.write_text(f"name: {name}\ntrain: d.csv\nvalidation: d.csv\ntext_columns: [text]\n"
                    f"label_column: label\nlabel_names: [x, y]\n{extra}")
    return spec


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("metrc: f1\n", "unknown field 'metrc' (did you mean 'metric'?)"),
        ("max_lenght: 64\n", "unknown field 'max_lenght' (did you mean 'max_length'?)"),
        ("colour: blue\n", "unknown field 'colour' (fields:"),
    ],
)
def test_unknown_task_file_keys_are_errors(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        data.load_task_file(_task_file(tmp_path, extra))
    assert expected in str(caught.value)


@pytest.mark.parametrize("name", ["../evil", "a/b", "'a\\\\b'", "..", ".hidden", "'my task'", "'x..y'", "-dash"])
def test_unsafe_task_names_are_errors(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="task name"):
        data.load_task_file(_task_file(tmp_path, "", name))


def test_safe_task_names_load(tmp_path: Path) -> None:
    assert data.load_task_file(_task_file(tmp_path, "", "sms_spam-v1.2")).name == "sms_spam-v1.2"


def test_bad_task_file_is_one_line_from_the_cli(capsys, no_work, tmp_path: Path) -> None:
    line = error_of(capsys, ["bench", "--tasks", str(_task_file(tmp_path, "metrc: f1\n"))])
    assert "did you mean 'metric'?" in line


# --------------------------------------------------------------------------- 8. plugin loading


def test_misspelled_hook_is_a_one_line_error(capsys) -> None:
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def harness_scorer():  # the typo under test: harness_scorers
        return [Scorer("never-seen", "head", lambda request: None)]

    module.harness_scorer = harness_scorer
    line = error_of(capsys, ["list"], extra=(module,))
    assert "typo_plugin" in line and "unknown hook 'harness_scorer'" in line
    assert "did you mean 'harness_scorers'?" in line


FAKE_PLUGIN = '''
from harness import Scorer, hookimpl


def score(request):
    import torch

    return torch.ones(3, 4)


@hookimpl
def harness_scorers():
    return [Scorer("random", "head", score, "not the built-in random", {"offset": 0})]
'''


@pytest.fixture
def clashing_distribution(tmp_path: Path, monkeypatch):
    """An installed distribution ``fake-scorers`` whose entry point and scorer are both named ``random``."""
    site = tmp_path / "site"
    info = site / "fake_scorers-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-scorers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[harness]\nrandom = fake_scorers_plugin\n")
    (site / "fake_scorers_plugin.py").write_text(FAKE_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield "fake-scorers"
    sys.modules.pop("fake_scorers_plugin", None)


def test_two_distributions_with_one_name_are_both_listed(capsys, clashing_distribution) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("scorer")]
    assert ["scorer", "prune-harness:random", "head", "prune-harness", "0.1.0"] in rows, out
    assert ["scorer", "fake-scorers:random", "head", "fake-scorers", "1.0"] in rows, out
    assert any(row[1] == "head-gradient" for row in rows), "unambiguous names stay bare"


def test_using_an_ambiguous_name_lists_the_qualified_ones(capsys, no_work, clashing_distribution, tiny_model_dir):
    line = error_of(capsys, ["bench", "--models", str(tiny_model_dir("bert")), *FAST])
    assert "'random'" in line and "prune-harness:random" in line and "fake-scorers:random" in line
    line = error_of(capsys, ["bench", "-o", "random.offset=1"])
    assert "fake-scorers:random" in line


def test_qualified_names_select_and_label_each_plugin(clashing_distribution, tiny_model_dir) -> None:
    from harness.config import BenchConfig
    from harness.planning import make_plan
    from harness.plugins import load_registry, options_for, parse_options

    registry = load_registry()
    assert registry.get("scorer", "head-gradient").name == "head-gradient"
    assert registry.get("scorer", "prune_harness:head-gradient").name == "head-gradient"
    config = BenchConfig().replace(models=(str(tiny_model_dir("bert")),), plugins=("fake-scorers:random",
                                   "prune-harness:random", "heads"), sparsities=(0.5,), baselines=False,
                                   options=("fake-scorers:random.offset=3",))
    overrides = parse_options(config.grid.options, registry)
    plan = make_plan(config, registry, overrides)
    scorers = {scorer.name: scorer for scorer, _ in plan.methods}
    assert set(scorers) == {"fake-scorers:random", "prune-harness:random"}
    assert scorers["fake-scorers:random"].description == "not the built-in random"
    assert options_for(scorers["fake-scorers:random"], overrides)["offset"] == 3
    assert options_for(scorers["prune-harness:random"], overrides)["offset"] == 0


class OtherGradient:
    """A plugin registered directly whose scorer reuses a built-in's name: qualified by its class name."""

    @hookimpl
    def harness_scorers(self):
        return [Scorer("head-gradient", "head", lambda request: None, "a second head-gradient")]


def test_records_with_one_role_and_name_from_two_sources(capsys) -> None:
    assert main(["list"], extra=[OtherGradient()]) == 0
    out = capsys.readouterr().out
    assert "prune-harness:head-gradient" in out and "OtherGradient:head-gradient" in out
    line = error_of(capsys, ["bench", "--plugins", "head-gradient,heads"], extra=(OtherGradient(),))
    assert "use prune-harness:head-gradient or OtherGradient:head-gradient" in line
    from harness.plugins import load_registry

    chosen = load_registry([OtherGradient()]).get("scorer", "OtherGradient:head-gradient")
    assert (chosen.name, chosen.description) == ("OtherGradient:head-gradient", "a second head-gradient")


# --------------------------------------------------------------------------- 9. where datasets writes


def test_local_task_files_are_cached_under_the_harness_cache(tmp_path: Path, monkeypatch) -> None:
    import datasets

    hf = tmp_path / "hf"
    hf.mkdir()
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf / "datasets"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf / "datasets")  # read at import otherwise
    table = tmp_path / "rows.csv"
    table.write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(8)))
    rows = data.read_rows(table)
    assert len(rows) == 8
    assert not [p for p in hf.rglob("*") if p.is_file()], "nothing may be written under HF_HOME"
    from harness.cache import default_root

    assert list((default_root() / "datasets").rglob("*.arrow")), "the Arrow copy lives in the harness cache"
