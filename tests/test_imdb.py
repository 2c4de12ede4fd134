"""Task ``imdb``: both local layouts, the hub path (faked), cleaning, seeded stratified caps, truncation, errors."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from conftest import WORDS, error_of, tiny_tokenizer
from harness_plugins import imdb

import harness
from harness import TaskRequest, conformance
from harness.batching import tokenize
from harness.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")
GOOD, BAD = ("good", "great", "superb", "clever"), ("bad", "awful", "boring", "dull")
COUNTS = {"train": (12, 8), "test": (6, 6)}  # (negative, positive) reviews per split


def review(label: int, i: int, split: str) -> str:
    """A review in the tiny tokenizer's words, with the release's ``<br />`` tags and a length that varies."""
    adjective = (GOOD if label else BAD)[i % 4]
    filler = " ".join(WORDS[: 3 + (7 * i) % 20])
    return f"{split} the movie was {adjective}.<br /><br />{filler}<br />it was {'very ' * (i % 3)}{adjective} {i}"


def reviews(split: str) -> list[tuple[str, int]]:
    negative, positive = COUNTS[split]
    return [(review(0, i, split), 0) for i in range(negative)] + [(review(1, i, split), 1) for i in range(positive)]


def write_tsv(folder: Path, rows: dict[str, list[tuple[str, int]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, pairs in rows.items():
        lines = ["text\tlabel", *(f"{text}\t{label}" for text, label in pairs)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def write_release(folder: Path, rows: dict[str, list[tuple[str, int]]]) -> None:
    """The Stanford layout: ``<split>/<pos|neg>/<id>_<rating>.txt``, plus files the loader must ignore."""
    for split, pairs in rows.items():
        for i, (text, label) in enumerate(pairs):
            directory = folder / "aclImdb" / split / ("pos" if label else "neg")
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{i}_{8 if label else 2}.txt").write_text(text)
        (folder / "aclImdb" / split / "urls_pos.txt").write_text("http://example.org\n")
    (folder / "aclImdb" / "imdb.vocab").write_text("the\n")


@pytest.fixture
def tsv_dir(tmp_path: Path) -> Path:
    write_tsv(tmp_path / "tsv" / "imdb", {split: reviews(split) for split in COUNTS})
    return tmp_path / "tsv"


@pytest.fixture
def release_dir(tmp_path: Path) -> Path:
    write_release(tmp_path / "release" / "imdb", {split: reviews(split) for split in COUNTS})
    return tmp_path / "release"


@pytest.fixture
def offline(monkeypatch) -> None:
    import datasets

    def refuse(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'stanfordnlp/imdb' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


def load(data_dir: Path | None, seed: int = 0, batch_size: int = 32, **options):
    return imdb.load(TaskRequest(data_dir, seed, {"max_train_examples": 0, "max_eval_examples": 0, **options},
                                 batch_size))


def pairs(split) -> set[tuple[str, int]]:
    return set(zip(split.text_a, split.labels))


def cleaned(split: str) -> set[tuple[str, int]]:
    return {(imdb.clean(text), label) for text, label in reviews(split)}


def test_the_tsv_layout_gives_cleaned_reviews_labels_and_protocol(tsv_dir):
    data = load(tsv_dir, batch_size=8)
    assert pairs(data.train) == cleaned("train") and pairs(data.validation) == cleaned("test")  # test = evaluation
    assert (data.label_names, data.metric, data.max_length, data.kind) == (("negative", "positive"), "accuracy",
                                                                           256, "classification")
    assert data.train_steps == math.ceil(20 / 8)  # one epoch of the training sample at the request's batch size
    assert not any("<br" in text for text in data.train.text_a + data.validation.text_a)
    protocol = data.protocol
    assert protocol["source"] == "local imdb/train.tsv, test.tsv" and protocol["max_length"] == 256
    assert protocol["truncation"].startswith("head:") and "cut_train" not in protocol
    assert (protocol["train_examples"], protocol["eval_examples"], protocol["train_available"]) == (20, 12, 20)
    assert (protocol["max_train_examples"], protocol["sample_seed"]) == (0, 0)
    assert protocol["cleaning"] == imdb.CLEANING and "no validation split" in protocol["evaluation"]
    assert all(isinstance(value, (str, int, float)) for value in protocol.values())
    conformance.check_plugin(imdb.harness_tasks()[0], request=TaskRequest(tsv_dir, 0, {}))


def test_the_release_layout_gives_the_same_splits(tsv_dir, release_dir):
    local, release = load(tsv_dir), load(release_dir)
    assert (release.train, release.validation) == (local.train, local.validation)  # canonical order: same samples
    assert release.protocol["source"] == "local imdb/aclImdb (Stanford release)"
    texts, labels = imdb.release_rows(release_dir / "imdb" / "aclImdb" / "train")
    assert labels == [0] * 12 + [1] * 8  # neg/ then pos/
    assert texts[:4] == [review(0, i, "train") for i in (0, 10, 11, 1)]  # sorted names: 0_2, 10_2, 11_2, 1_2
    capped = load(release_dir, max_train_examples=6, max_eval_examples=4)
    assert (capped.train, capped.validation) == (load(tsv_dir, max_train_examples=6, max_eval_examples=4).train,
                                                 load(tsv_dir, max_train_examples=6, max_eval_examples=4).validation)


def test_br_tags_are_removed_and_whitespace_collapsed():
    assert imdb.clean("Great.<br /><br />Really  <BR/>great<br>!\n") == "Great. Really great !"
    assert imdb.clean("no tags at all") == "no tags at all"


def test_the_hub_gives_the_same_splits(tsv_dir, tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_hub(path, split):
        calls.append((path, split))
        rows = reviews(split)
        random.Random(1).shuffle(rows)  # the hub's order is not the files': the samples must not depend on it
        return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [label for _, label in rows]})

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    local, hub = load(tsv_dir, max_train_examples=10), load(None, max_train_examples=10)
    assert calls == [("stanfordnlp/imdb", "train"), ("stanfordnlp/imdb", "test")]
    assert (hub.train, hub.validation) == (local.train, local.validation)
    assert hub.protocol["source"] == "hub stanfordnlp/imdb"
    assert load(tmp_path / "elsewhere").validation == local.validation  # a --data-dir without imdb/


def test_caps_are_seeded_stratified_and_deterministic(tsv_dir):
    data = load(tsv_dir, max_train_examples=10, max_eval_examples=4)
    assert len(data.train) == 10 and sorted(data.train.labels) == [0] * 6 + [1] * 4  # 12:8 kept as 6:4
    assert sorted(data.validation.labels) == [0, 0, 1, 1]
    assert pairs(data.train) <= cleaned("train") and pairs(data.validation) <= cleaned("test")
    again = load(tsv_dir, seed=7, max_train_examples=10, max_eval_examples=4)  # not tied to the grid seed
    assert (again.train, again.validation) == (data.train, data.validation)
    other = load(tsv_dir, max_train_examples=10, sample_seed=1)
    assert pairs(other.train) != pairs(data.train)
    assert data.protocol["train_examples"] == 10 and data.protocol["max_eval_examples"] == 4
    assert data.protocol["train_available"] == 20 and data.protocol["eval_available"] == 12


def test_the_stratified_order_keeps_every_prefix_balanced():
    labels = [0] * 30 + [1] * 10
    order = imdb.stratified(labels, 0, seed=3)
    assert sorted(order) == list(range(40)) and order == imdb.stratified(labels, 0, seed=3)
    for n in range(4, 41, 4):  # --eval-limit N: the first N hold the split's 3:1
        assert sum(labels[i] for i in order[:n]) == n // 4
    assert imdb.quotas([5, 5], 3) == [2, 1] and imdb.quotas([1, 2], 2) == [1, 1] and imdb.quotas([3, 1], 0) == [0, 0]
    assert len(imdb.stratified(labels, 100, seed=0)) == 40


LONG = " ".join(WORDS)  # 37 words, one tiny-tokenizer token each


def tokens(split, index: int, tokenizer, max_length: int) -> list[str]:
    """What the harness feeds the model for one review (special tokens dropped)."""
    batch = tokenize(tokenizer, split, [index], max_length)
    return [t for t in tokenizer.convert_ids_to_tokens(batch["input_ids"][0]) if t not in ("[CLS]", "[SEP]")]


@pytest.mark.parametrize("truncation, head, tail", [("head", 14, 0), ("tail", 0, 9), ("head+tail", 2, 7)])
def test_truncation_keeps_what_it_says(tmp_path, truncation, head, tail):
    write_tsv(tmp_path / "imdb", {"train": [(LONG, 1), ("the plot was bad", 0)],
                                  "test": [("good", 1), ("bad", 0)]})
    data = load(tmp_path, max_length=16, truncation=truncation)
    long = data.train.labels.index(1)
    kept = tokens(data.train, long, tiny_tokenizer(tmp_path / "tok"), 16)
    assert kept == WORDS[:head] + (WORDS[-tail:] if tail else [])
    if truncation == "head":
        assert data.train.text_a[long] == LONG  # the tokenizer cuts: 16 tokens, [CLS] and [SEP] included
        return
    assert (data.protocol["head_words"], data.protocol["tail_words"]) == (head, tail)  # 2/3 of 14 = 9 words
    assert data.protocol["cut_train"] == 0.5 and data.protocol["cut_eval"] == 0.0
    assert data.protocol["truncation"].startswith(f"{truncation}: whitespace words")


def test_truncation_words_and_the_sun_split():
    options = imdb.ImdbOptions(max_length=512, truncation="head+tail")
    assert imdb.words_kept(options) == (85, 255)  # 340 words of 510 tokens, 128:382
    assert imdb.words_kept(imdb.ImdbOptions(truncation="head+tail", truncation_words=510)) == (128, 382)
    assert imdb.words_kept(imdb.ImdbOptions(truncation="tail", truncation_words=5)) == (0, 5)
    assert imdb.cut("a b c d e f", 1, 2) == "a e f" and imdb.cut("a b c", 1, 2) == "a b c"


def test_missing_and_partial_copies_are_one_line_errors(tsv_dir, release_dir, tmp_path, offline, capsys):
    def message(data_dir: Path | None) -> str:
        with pytest.raises(UsageError) as error:
            load(data_dir)
        assert "\n" not in str(error.value)
        return str(error.value)

    elsewhere = message(tmp_path / "elsewhere")
    assert elsewhere.startswith("imdb: no ") and "cannot be loaded from the hub (Couldn't reach" in elsewhere
    assert "no --data-dir" in message(None) and imdb.LAYOUT in message(None)
    (tsv_dir / "imdb" / "test.tsv").unlink()
    assert message(tsv_dir).endswith("has no test.tsv (it needs train.tsv and test.tsv)")
    (tsv_dir / "imdb" / "train.tsv").unlink()
    assert "holds neither train.tsv and test.tsv nor aclImdb/" in message(tsv_dir)
    for file in (release_dir / "imdb" / "aclImdb" / "test" / "neg").glob("*.txt"):
        file.unlink()
    assert "test/neg holds no *.txt reviews" in message(release_dir)
    line = error_of(capsys, ["bench", "--tasks", "imdb", "--out", str(tmp_path / "o"), "--no-progress"])
    assert "no --data-dir" in line and "pass --data-dir DIR with DIR/imdb/train.tsv" in line


@pytest.mark.parametrize("content, expected", [
    ("text\tlabel\ngreat\t1\nawful\tmeh\n", r"train.tsv:3: label 'meh' is not 0, 1, negative or positive"),
    ("text\tscore\ngreat\t1\n", r"needs a header with columns text and label"),
    ("text\tlabel\ngreat\t1\textra\n", r"train.tsv:2: 3 fields, the header has 2"),
    ("text\tlabel\n", r"has a header but no reviews"),
])
def test_bad_tsv_rows_are_one_line_errors(tmp_path, content, expected):
    write_tsv(tmp_path / "imdb", {"test": [("good", 1), ("bad", 0)]})
    (tmp_path / "imdb" / "train.tsv").write_text(content)
    with pytest.raises(UsageError, match=expected) as error:
        load(tmp_path)
    assert "\n" not in str(error.value)


def test_names_as_labels_and_blank_lines_are_read(tmp_path):
    write_tsv(tmp_path / "imdb", {"test": [("good", 1), ("bad", 0)]})
    (tmp_path / "imdb" / "train.tsv").write_text('label\ttext\npositive\t"quoted" great\n\nnegative\tawful\n')
    assert pairs(load(tmp_path).train) == {('"quoted" great', 1), ("awful", 0)}  # no quoting: quotes are text


def test_a_tiny_grid_runs_end_to_end(tsv_dir, tmp_path, tiny_model_dir):
    result = harness.run(models=[str(tiny_model_dir("bert"))], tasks=["imdb"], data_dir=str(tsv_dir),
                         plugins=["head-gradient", "heads"], sparsities=[0.5], baselines=False, batch_size=4,
                         options=["imdb.max_length=32", "imdb.truncation=head+tail", "imdb.max_eval_examples=8"],
                         calib_examples=8, latency_batch=2, latency_tokens=8, isolation="none", progress=False,
                         out=tmp_path / "out")
    rows = result.rows
    assert result.ok and len(rows) == 2 and (rows["status"] == "ok").all() and set(rows["task"]) == {"imdb"}
    protocol = json.loads(rows.iloc[0]["extras"])
    assert protocol["source"] == "local imdb/train.tsv, test.tsv" and protocol["eval_examples"] == 8
    assert (protocol["max_length"], protocol["head_words"], protocol["tail_words"]) == (32, 5, 15)
    assert rows.iloc[0]["train_s"] > 0 and result.counts["fine_tunes_run"] == 1
