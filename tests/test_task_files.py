"""Task files that forgive and explain: format:, byte-order marks, closest columns, syntax error positions,
positive_label and max_train_examples."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_DATA, error_of

from harness import TaskRequest, batching, data, provenance
from harness.errors import UsageError

MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_ROWS = (
    '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " , of deliberately distorting '
    'his evidence .\tReferring to him as only " the witness " , Amrozi accused his brother of deliberately '
    "distorting his evidence .\n"
    "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 billion ."
    "\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 .\n"
)
MRPC_TASK = ('train: train.txt\nvalidation: train.txt\nformat: tsv\ntext_columns: ["#1 String", "#2 String"]\n'
             "label_column: Quality\nlabel_names: [0, 1]\n")
DOUBLE_BOM = "\ufeff".encode().decode("latin-1").encode()  # the UTF-8 BOM read as Latin-1, saved as UTF-8: "ï»¿"


def _load(spec: Path, seed: int = 0):
    return data.load_task_file(spec).load(TaskRequest(None, seed))


def _write(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder / name


# ------------------------------------------------------------------------------------------- format:


def test_a_tab_separated_txt_reads_with_format_tsv(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text(MRPC_HEADER + MRPC_ROWS)
    loaded = _load(_write(tmp_path, "mrpc.yaml", MRPC_TASK))
    assert loaded.train.labels == (1, 0) and loaded.train.text_a[0].startswith("Amrozi accused")
    assert loaded.train.text_b is not None and '" the witness "' in loaded.train.text_b[0]  # read without quoting
    assert loaded.protocol == {}


@pytest.mark.parametrize("fmt, message", [
    (None, "add format: (csv, tsv, json, jsonl) to the task file"),
    ("xls", "format 'xls' is not one of csv, tsv, json, jsonl"),
])
def test_an_unknown_suffix_or_format_is_one_line_naming_the_choices(tmp_path: Path, fmt: str | None,
                                                                     message: str) -> None:
    (tmp_path / "train.txt").write_text(MRPC_HEADER + MRPC_ROWS)
    text = MRPC_TASK.replace("format: tsv\n", "" if fmt is None else f"format: {fmt}\n")
    with pytest.raises(UsageError) as caught:
        _load(_write(tmp_path, "mrpc.yaml", text))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_format_json_reads_json_lines_of_any_name(tmp_path: Path) -> None:
    rows = [{"body": f"text {i}", "y": "b" if i % 2 else "a"} for i in range(6)]
    (tmp_path / "rows.data").write_text("\n".join(json.dumps(r) for r in rows))
    spec = _write(tmp_path, "t.yaml", "train: rows.data\nvalidation: rows.data\nformat: JSONL\ntext_columns: body\n"
                                      "label_column: y\nlabel_names: [a, b]\n")
    assert _load(spec).train.labels == (0, 1, 0, 1, 0, 1)


# -------------------------------------------------------------------------------------- byte-order marks


@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", DOUBLE_BOM, b"\xef\xbb\xbf" + DOUBLE_BOM],
                         ids=["utf8", "double-encoded", "both"])
def test_byte_order_marks_leave_the_header_clean(tmp_path: Path, bom: bytes) -> None:
    (tmp_path / "train.txt").write_bytes(bom + (MRPC_HEADER + MRPC_ROWS).encode())
    rows = data.read_rows(tmp_path / "train.txt", fmt="tsv")
    assert rows.column_names == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    assert _load(_write(tmp_path, "mrpc.yaml", MRPC_TASK)).train.labels == (1, 0)


@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", DOUBLE_BOM], ids=["utf8", "double-encoded"])
def test_byte_order_marks_are_dropped_from_text_files(tmp_path: Path, bom: bytes) -> None:
    (tmp_path / "corpus.txt").write_bytes(bom + b"First paragraph.\n\nSecond paragraph.\n")
    assert data.read_texts(tmp_path / "corpus.txt").text_a == ("First paragraph.", "Second paragraph.")


@pytest.mark.parametrize("change, expected", [
    ("label_column: Quality", "no column 'quality' (did you mean 'Quality'? columns: Quality, #1 ID,"),
    ('"#1 String", "#2 String"', "no column '#1 Strng' (did you mean '#1 String'?"),
])
def test_a_missing_column_names_the_closest_one(tmp_path: Path, change: str, expected: str) -> None:
    (tmp_path / "train.txt").write_bytes(DOUBLE_BOM + (MRPC_HEADER + MRPC_ROWS).encode())
    wrong = "label_column: quality" if change.startswith("label") else '"#1 Strng", "#2 String"'
    with pytest.raises(UsageError) as caught:
        _load(_write(tmp_path, "mrpc.yaml", MRPC_TASK.replace(change, wrong)))
    assert expected in str(caught.value)


def test_a_missing_causal_lm_column_names_the_closest_one(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("id,Body\n1,some text\n")
    spec = _write(tmp_path, "lm.yaml", "kind: causal-lm\ntrain: t.csv\nvalidation: t.csv\ntext_columns: body\n")
    with pytest.raises(UsageError, match=r"no column 'body' \(did you mean 'Body'\? columns: id, Body\)"):
        _load(spec)


# -------------------------------------------------------------------------------------- syntax errors

BROKEN_YAML = "name: broken\ntrain: train.csv\nvalidation: train.csv\ntext_columns: [a\nlabel_column: y\n"


def test_a_yaml_syntax_error_gives_its_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        data.load_task_file(_write(tmp_path, "mytask.yaml", BROKEN_YAML))
    assert "mytask.yaml: not valid YAML (line 5, column 13: " in str(caught.value)


def test_a_json_syntax_error_gives_its_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        data.load_task_file(_write(tmp_path, "mytask.json", '{\n  "train": "a.csv",\n  "metric" "f1"\n}\n'))
    assert "mytask.json: not valid JSON (line 3, column 12: Expecting ':' delimiter)" in str(caught.value)


def test_a_broken_task_file_is_one_line_and_exit_2_from_the_cli(capsys, monkeypatch, tmp_path: Path) -> None:
    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the plan was accepted and work started")

    monkeypatch.setattr(provenance, "record", started)
    monkeypatch.chdir(tmp_path)
    line = error_of(capsys, ["bench", "--tasks", str(_write(tmp_path, "broken.yaml", BROKEN_YAML))])
    assert "broken.yaml: not valid YAML (line 5, column 13: " in line


def test_a_task_file_with_a_byte_order_mark_parses(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text(MRPC_HEADER + MRPC_ROWS)
    (tmp_path / "t.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({
        "train": "train.txt", "validation": "train.txt", "format": "tsv", "text_columns": "#1 String",
        "label_column": "Quality", "label_names": ["0", "1"]}).encode())
    assert _load(tmp_path / "t.json").train.labels == (1, 0)


# ---------------------------------------------------------------------------------------- positive_label

SPAM_ROWS = "text,kind\n" + "".join(f"message {i},{k}\n" for i, k in enumerate("s h s h h s h h".split()))


@pytest.mark.parametrize("labels", ["names", "indices"])
def test_positive_label_is_the_class_f1_scores(tmp_path: Path, labels: str) -> None:
    rows = SPAM_ROWS.replace(",s\n", ",spam\n").replace(",h\n", ",ham\n")
    if labels == "indices":  # indices refer to label_names as written: 0 = spam, 1 = ham
        rows = SPAM_ROWS.replace(",s\n", ",0\n").replace(",h\n", ",1\n")
    (tmp_path / "all.csv").write_text(rows)
    spec = _write(tmp_path, "spam.yaml", "train: all.csv\nvalidation: all.csv\ntext_columns: text\nlabel_column: kind\n"
                                         "label_names: [spam, ham]\npositive_label: spam\nmetric: f1\n")
    loaded = _load(spec)
    assert loaded.label_names == ("ham", "spam")
    truth = [loaded.label_names[i] for i in loaded.validation.labels]
    assert truth == "spam ham spam ham ham spam ham ham".split()
    guess = "spam spam ham ham ham spam spam ham".split()  # spam: 2 right, 2 false alarms, 1 missed
    predictions = [loaded.label_names.index(g) for g in guess]
    precision, recall = 2 / 4, 2 / 3
    expected = 2 * precision * recall / (precision + recall)  # ham's F1 would be 2/3
    assert batching.metric_value("f1", loaded.validation.labels, predictions) == pytest.approx(expected)
    assert expected == pytest.approx(4 / 7) and loaded.protocol == {"positive_label": "spam"}


def test_without_positive_label_f1_scores_the_second_name_and_keys_stay(tmp_path: Path) -> None:
    (tmp_path / "all.csv").write_text(SPAM_ROWS.replace(",s\n", ",spam\n").replace(",h\n", ",ham\n"))
    spec = _write(tmp_path, "spam.yaml", "train: all.csv\nvalidation: all.csv\ntext_columns: text\nlabel_column: kind\n"
                                         "label_names: [ham, spam]\nmetric: f1\n")
    loaded = _load(spec)
    assert loaded.label_names == ("ham", "spam") and loaded.protocol == {}
    assert data.fingerprint(loaded) == "c74ec9cf92d568bc"  # as before positive_label existed: run ids unchanged


@pytest.mark.parametrize("extra, message", [
    ("positive_label: eggs\nmetric: f1\n", "positive_label 'eggs' is not one of the label_names (spam, ham)"),
    ("positive_label: spam\nmetric: mcc\n", "positive_label picks the class binary F1 scores: it needs metric: f1"),
])
def test_bad_positive_labels_are_one_line_errors(tmp_path: Path, extra: str, message: str) -> None:
    spec = _write(tmp_path, "t.yaml", "train: a.csv\nvalidation: a.csv\ntext_columns: text\nlabel_column: kind\n"
                                      f"label_names: [spam, ham]\n{extra}")
    with pytest.raises(UsageError) as caught:
        data.load_task_file(spec)
    assert message in str(caught.value)


# ------------------------------------------------------------------------------------ max_train_examples


def _spam_task(folder: Path, cap: int | str, seed: int = 0) -> Path:
    rows = [{"text": f"message {i}", "kind": "spam" if i % 4 == 0 else "ham"} for i in range(200)]
    (folder / "all.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = {"train": "all.jsonl", "validation_fraction": 0.25, "text_columns": "text", "label_column": "kind",
            "label_names": ["ham", "spam"], "metric": "f1", "split_seed": seed, "max_train_examples": cap}
    return _write(folder, f"spam-{seed}.json", json.dumps(spec))


def test_max_train_examples_is_a_seeded_stratified_cap_after_the_split(tmp_path: Path) -> None:
    capped, again, other = _load(_spam_task(tmp_path, 40)), _load(_spam_task(tmp_path, 40), 7), \
        _load(_spam_task(tmp_path, 40, seed=1))
    spec = json.loads((tmp_path / "spam-0.json").read_text())
    del spec["max_train_examples"]
    full = _load(_write(tmp_path, "full.json", json.dumps(spec)))
    assert len(full.train) == 150 and len(capped.train) == 40
    assert capped.validation == full.validation  # the cap comes after the validation split
    assert set(capped.train.text_a) <= set(full.train.text_a)
    assert capped.train == again.train and capped.train != other.train  # seeded by split_seed, not the grid's seed
    share = Counter(full.train.labels)[1] / len(full.train)
    assert abs(Counter(capped.train.labels)[1] - 40 * share) <= 1  # stratified by label
    assert capped.protocol == {"max_train_examples": 40,
                               "train_subsample": "40 of 150, stratified by label, split_seed 0"}
    assert full.protocol == {}


def test_max_train_examples_of_a_causal_lm_task_are_the_first_after_a_shuffle(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("\n\n".join(f"paragraph {i}" for i in range(50)))
    text = "kind: causal-lm\ntrain: corpus.txt\nvalidation_fraction: 0.2\n"
    full = _load(_write(tmp_path, "full.yaml", text))
    capped = _load(_write(tmp_path, "capped.yaml", text + "max_train_examples: 10\n"))
    assert len(capped.train) == 10 and set(capped.train.text_a) <= set(full.train.text_a)
    assert capped.validation == full.validation and capped == _load(tmp_path / "capped.yaml", 3)
    assert capped.protocol["train_subsample"] == "10 of 40, seeded shuffle, split_seed 0"


@pytest.mark.parametrize("cap", [0, -3, "ten", True, 2.5])
def test_bad_max_train_examples_are_errors(tmp_path: Path, cap: object) -> None:
    with pytest.raises(UsageError, match="max_train_examples must be a positive whole number"):
        data.load_task_file(_spam_task(tmp_path, cap))  # type: ignore[arg-type]


@pytest.mark.skipif(not (SHARED_DATA / "sms_spam").is_dir(), reason="needs ../shared/data")
def test_the_small_sms_spam_example_caps_training_and_keeps_validation() -> None:
    tasks = Path(__file__).resolve().parents[1] / "examples" / "tasks"
    small, full = _load(tasks / "sms_spam_small.yaml"), _load(tasks / "sms_spam.yaml")
    assert small.label_names == full.label_names == ("ham", "spam") and small.validation == full.validation
    assert len(full.train) == 4459 and len(small.train) == 1000
    assert abs(sum(small.train.labels) - 1000 * sum(full.train.labels) / 4459) <= 1
    assert small.protocol == {"positive_label": "spam", "max_train_examples": 1000,
                              "train_subsample": "1000 of 4459, stratified by label, split_seed 0"}


def test_a_cap_too_small_to_stratify_falls_back_to_a_seeded_shuffle_and_says_so() -> None:
    from harness.records import Split

    split = Split(tuple(f"t{i}" for i in range(10)), (1,) + (0,) * 9)  # one example of class 1: no stratifying
    capped, how = data.cap_split(split, 5, seed=3)
    assert len(capped) == 5 and set(capped.text_a) <= set(split.text_a) and capped == data.cap_split(split, 5, 3)[0]
    assert how == "5 of 10, seeded shuffle (too few examples of a class to stratify), split_seed 3"
    assert data.cap_split(split, 10, 3) == (split, "all 10 (no more than max_train_examples)")
