"""Task data: task files, the local SST-2 layout, the synthetic default, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from harness_plugins import glue, synthetic
from sklearn import metrics

from harness import TaskRequest, batching, data
from harness.errors import UsageError


def test_task_file_with_two_text_columns_and_label_names(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text('s1\ts2\ty\na "quoted\tb\tyes\nc\td\tno\n')
    (tmp_path / "dev.tsv").write_text("s1\ts2\ty\ne\tf\tno\n")
    (tmp_path / "pairs.yaml").write_text(
        "name: pairs\ntrain: train.tsv\nvalidation: dev.tsv\ntext_columns: [s1, s2]\n"
        "label_column: y\nlabel_names: [no, yes]\nmetric: mcc\nmax_length: 40\n"
    )
    task = data.load_task_file(tmp_path / "pairs.yaml")
    loaded = task.load(TaskRequest(None, 0))
    assert task.name == "pairs" and loaded.metric == "mcc" and loaded.max_length == 40
    assert loaded.train.text_a == ('a "quoted', "c") and loaded.train.text_b == ("b", "d")
    assert loaded.train.labels == (1, 0) and loaded.validation.labels == (0,)


def test_json_task_file_with_a_stratified_seeded_split(tmp_path: Path) -> None:
    rows = [{"text": f"message {i}", "kind": "spam" if i % 4 == 0 else "ham"} for i in range(200)]
    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = {"train": "all.jsonl", "validation_fraction": 0.25, "text_columns": "text",
            "label_column": "kind", "label_names": ["ham", "spam"], "metric": "f1"}
    (tmp_path / "spam.json").write_text(json.dumps(spec))
    first = data.load_task_file(tmp_path / "spam.json").load(TaskRequest(None, 0))
    second = data.load_task_file(tmp_path / "spam.json").load(TaskRequest(None, 5))
    assert len(first.train) == 150 and len(first.validation) == 50
    assert sum(first.validation.labels) == 13 or sum(first.validation.labels) == 12  # 25% spam kept
    assert first.validation == second.validation  # the split seed is the file's, not the grid's
    assert not set(first.train.text_a) & set(first.validation.text_a)


@pytest.mark.parametrize(
    "content, message",
    [
        ("train: x.csv\n", "missing field(s) text_columns, label_column, label_names"),
        ("[1, 2]", "holds a mapping"),
        ("train: x.csv\ntext_columns: [a]\nlabel_column: b\nlabel_names: [c, d]\n", "validation"),
        ("train: x.csv\nvalidation: x.csv\ntext_columns: [a]\nlabel_column: b\nlabel_names: [c, d]\nmetric: auc\n",
         "metric must be one of"),
    ],
)
def test_bad_task_files(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "t.yaml").write_text(content)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.load_task_file(tmp_path / "t.yaml")


def test_unknown_label_value_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("text,label\na,maybe\n")
    rows = data.read_rows(tmp_path / "t.csv")
    with pytest.raises(UsageError, match="label 'maybe' is not one of no, yes"):
        data.to_split(rows, ["text"], "label", ["no", "yes"], "t.csv")


def test_synthetic_task_is_deterministic_balanced_and_disjoint() -> None:
    one, two = synthetic.load(TaskRequest(None, 0, {"data_seed": 2019})), synthetic.load(TaskRequest(None, 9, {}))
    assert one == two
    assert (len(one.train), len(one.validation)) == (4000, 800)
    assert not set(one.train.text_a) & set(one.validation.text_a)
    assert 0.4 < sum(one.validation.labels) / len(one.validation) < 0.6
    negated = [t for t in one.train.text_a if " not " in t and " but " not in t]
    assert negated, "negation appears in the data"


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize(
    "name, sizes, metric, pairs",
    [("sst2", (67349, 872), "accuracy", False), ("cola", (8551, 1043), "mcc", False), ("rte", (2489, 277), "accuracy", True)],
)
def test_glue_tasks_from_the_local_layout(name: str, sizes: tuple[int, int], metric: str, pairs: bool) -> None:
    from harness.plugins import load_registry

    task = load_registry().get("task", name)
    loaded = task.load(TaskRequest(SHARED_DATA, 0, dict(task.options)))
    assert (len(loaded.train), len(loaded.validation)) == sizes
    assert loaded.metric == metric and (loaded.train.text_b is not None) == pairs
    assert set(loaded.validation.labels) == {0, 1}
    assert all(text.strip() for text in loaded.train.text_a[:200])
    if name == "sst2":
        assert loaded == glue.load(TaskRequest(SHARED_DATA, 0, {}))


@pytest.mark.parametrize("name", ["accuracy", "f1", "mcc"])
def test_metrics_match_scikit_learn(name: str) -> None:
    labels, predictions = [0, 1, 1, 0, 1, 1, 0], [0, 1, 0, 0, 1, 1, 1]
    expected = {
        "accuracy": metrics.accuracy_score(labels, predictions),
        "f1": metrics.f1_score(labels, predictions),
        "mcc": metrics.matthews_corrcoef(labels, predictions),
    }[name]
    assert batching.metric_value(name, labels, predictions) == pytest.approx(expected)
    assert batching.metric_value("f1", [0, 1, 2, 2], [0, 1, 2, 1], 3) == pytest.approx(
        metrics.f1_score([0, 1, 2, 2], [0, 1, 2, 1], average="macro"))


def test_training_stream_gives_exactly_the_steps_and_reshuffles() -> None:
    from conftest import tiny_tokenizer

    split = synthetic.generate()["validation"]
    tokenizer = tiny_tokenizer(Path("/tmp") / "harness-test-vocab")
    stream = list(batching.training_stream(tokenizer, split, steps=30, batch_size=32, max_length=16, seed=1))
    assert len(stream) == 30 and all(len(b["labels"]) == 32 for b in stream)
    again = list(batching.training_stream(tokenizer, split, steps=30, batch_size=32, max_length=16, seed=1))
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(stream, again))


@pytest.mark.skipif(not (SHARED_DATA / "sms_spam").is_dir(), reason="needs ../shared/data")
def test_sms_spam_task_file_in_examples() -> None:
    task = data.load_task_file(Path(__file__).resolve().parents[1] / "examples" / "tasks" / "sms_spam.yaml")
    loaded = task.load(TaskRequest(None, 0))
    assert task.name == "sms_spam" and loaded.metric == "f1"
    assert len(loaded.train) + len(loaded.validation) == 5574 and len(loaded.validation) == 1115
    spam_share = [sum(s.labels) / len(s) for s in (loaded.train, loaded.validation)]
    assert abs(spam_share[0] - spam_share[1]) < 0.005, "the split is stratified"
