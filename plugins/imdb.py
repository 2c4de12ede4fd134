"""Task ``imdb``: IMDB movie-review sentiment (Maas et al. 2011), binary, scored by accuracy.

IMDB has no validation split: the 25,000-review test split is the evaluation
split. Labels are 0 = negative, 1 = positive. Every source is cleaned the same
way (``<br />`` tags, which the release keeps, become spaces; whitespace runs
collapse) and put in one canonical order (sorted by text, then label), so the
hub, the TSV copy and the original release give the same subsamples.

Subsamples (``max_train_examples``, ``max_eval_examples``; 0 = all) are
stratified by label and drawn with ``sample_seed``, not the grid seed: the
harness loads a task once per grid with its first seed, so a sample tied to it
would make a row depend on which other seeds its grid had. Each split's order
interleaves the labels, so an ``--eval-limit N`` prefix stays balanced. The
defaults (2,000 training reviews, one epoch; 1,000 test reviews, scored again
for every cell, ±1.1 points of standard error near 85%) keep MiniLM at 256
tokens affordable on a 2-core CPU; 0 takes all 25,000.

Truncation: the harness tokenizes every classification example itself with
``truncation=True, max_length=max_length``, keeping the head (the tokenizer's
default side), and a task has no say in that. So ``head`` is exactly the first
``max_length`` tokens, special tokens included, while ``tail`` and ``head+tail``
(Sun et al. 2019, "How to fine-tune BERT": the first 128 and last 382 of 512
tokens) are applied before tokenizing, on whitespace-separated words:
``truncation_words`` words (default 2/3 of ``max_length - 2``, room for 1.5
tokens a word), split 128:382 for ``head+tail``. A review whose kept words still
need more than ``max_length`` tokens loses its last tokens to the tokenizer.
The word counts and the share of reviews cut are in every row's protocol.

Local (``--data-dir DIR``), either layout under ``DIR/imdb/``:

- ``train.tsv`` and ``test.tsv``: a header with ``text`` and ``label`` (0/1 or
  negative/positive), tab-separated, no quoting (read with ``csv.QUOTE_NONE``);
- the Stanford release unpacked: ``aclImdb/{train,test}/{pos,neg}/*.txt``
  (``unsup`` and the other files are ignored).

Without a local copy: the hub's ``stanfordnlp/imdb`` (train and test splits).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from harness import Options, Split, Task, TaskData, TaskRequest, hookimpl, option
from harness.errors import UsageError

FOLDER = "imdb"
HUB = "stanfordnlp/imdb"
SPLITS = ("train", "test")
LABELS = ("negative", "positive")
RELEASE_DIRS = {"neg": 0, "pos": 1}
LABEL_VALUES = {"0": 0, "1": 1, "negative": 0, "positive": 1}
SUN_HEAD_SHARE = 128 / 510  # Sun et al.: 128 head + 382 tail tokens of 512 (2 special tokens)
LAYOUT = (f"DIR/{FOLDER}/train.tsv and test.tsv (columns text, label) "
          f"or DIR/{FOLDER}/aclImdb/{{train,test}}/{{pos,neg}}/*.txt")
CLEANING = "<br /> tags replaced by a space, whitespace runs collapsed"
BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)

Rows = tuple[list[str], list[int]]  # texts and labels of one split


@dataclass(frozen=True)
class ImdbOptions(Options):
    """Options of ``imdb``: review length, how it is cut, and how much of the data a default run touches."""

    max_length: int = option(256, low=4, help="tokens per review after truncation")
    truncation: Literal["head", "tail", "head+tail"] = option(
        "head", help="which tokens of a long review to keep (tail, head+tail: cut on words before tokenizing)")
    truncation_words: int = option(0, low=0, help="tail, head+tail: words kept (0: 2/3 of max_length - 2)")
    max_train_examples: int = option(2000, low=0, help="stratified training subsample (0: all 25,000)")
    max_eval_examples: int = option(1000, low=0, help="stratified test subsample scored (0: all 25,000)")
    sample_seed: int = option(0, low=0, help="seed of both subsamples (the same reviews for every grid seed)")
    epochs: float = option(1.0, low=0, help="default budget: epochs of the training sample (--train-steps overrides)")


def clean(text: str) -> str:
    """A review without the release's ``<br />`` tags, whitespace collapsed (tokenizers split on it anyway)."""
    return " ".join(BREAK.sub(" ", text).split())


def label_of(value: str, where: str) -> int:
    """0/1 or a label name, else a one-line error naming the file and line."""
    label = LABEL_VALUES.get(value.strip().lower())
    if label is None:
        raise UsageError(f"imdb: {where}: label {value!r} is not 0, 1, negative or positive")
    return label


def tsv_rows(path: Path) -> Rows:
    """One split of the TSV layout: columns ``text`` and ``label`` found by the header, no quoting."""
    texts: list[str] = []
    labels: list[int] = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        if "text" not in header or "label" not in header:
            raise UsageError(f"imdb: {path} needs a header with columns text and label (it has {header})")
        text, label = header.index("text"), header.index("label")
        for line, row in enumerate(reader, start=2):
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                raise UsageError(f"imdb: {path}:{line}: {len(row)} fields, the header has {len(header)}")
            texts.append(row[text])
            labels.append(label_of(row[label], f"{path}:{line}"))
    if not texts:
        raise UsageError(f"imdb: {path} has a header but no reviews")
    return texts, labels


def release_rows(folder: Path) -> Rows:
    """One split of the unpacked release: ``neg/*.txt`` then ``pos/*.txt``, in sorted file-name order."""
    texts: list[str] = []
    labels: list[int] = []
    for name, label in RELEASE_DIRS.items():
        files = sorted((folder / name).glob("*.txt"))
        if not files:
            raise UsageError(f"imdb: {folder / name} holds no *.txt reviews (expected {LAYOUT})")
        texts += [file.read_text(encoding="utf-8") for file in files]
        labels += [label] * len(files)
    return texts, labels


def local_rows(data_dir: Path) -> tuple[dict[str, Rows], str] | None:
    """Both splits from ``<data_dir>/imdb`` and their source, or ``None`` when that folder is not there."""
    folder = data_dir / FOLDER
    if not folder.is_dir():
        return None
    tsvs = [folder / f"{split}.tsv" for split in SPLITS]
    if any(path.exists() for path in tsvs):
        missing = [path.name for path in tsvs if not path.is_file()]
        if missing:
            raise UsageError(f"imdb: {folder} has no {' or '.join(missing)} (it needs train.tsv and test.tsv)")
        return {split: tsv_rows(path) for split, path in zip(SPLITS, tsvs)}, "local imdb/train.tsv, test.tsv"
    release = folder / "aclImdb"
    if not release.is_dir():
        raise UsageError(f"imdb: {folder} holds neither train.tsv and test.tsv nor aclImdb/ (expected {LAYOUT})")
    return {split: release_rows(release / split) for split in SPLITS}, "local imdb/aclImdb (Stanford release)"


def hub_rows(why: str) -> dict[str, Rows]:
    """Both splits from the hub (or a warm ``datasets`` cache); ``why`` says where no local copy was."""
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = {split: datasets.load_dataset(HUB, split=split) for split in SPLITS}
    except Exception as error:  # offline, hub down, no such dataset: all mean "give local files"
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise UsageError(f"imdb: {why}, and {HUB} cannot be loaded from the hub ({first}); "
                         f"pass --data-dir DIR with {LAYOUT}") from None
    return {split: (list(rows["text"]), [int(label) for label in rows["label"]]) for split, rows in loaded.items()}


def quotas(counts: Sequence[int], take: int) -> list[int]:
    """``take`` split over classes in proportion to ``counts`` (largest remainder; ties to the lower label)."""
    total = sum(counts)
    exact = [take * count / total for count in counts]
    shares = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(counts)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[: take - sum(shares)]:
        shares[i] += 1
    return shares


def stratified(labels: Sequence[int], cap: int, seed: int) -> list[int]:
    """Indices of a seeded sample of ``cap`` examples (0 or more than there are: all), stratified by label.

    Each class's picks are shuffled and the classes interleaved by relative rank,
    so every prefix of the result holds the labels in their overall proportion.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    members = {c: [i for i, label in enumerate(labels) if label == c] for c in classes}
    take = len(labels) if cap == 0 else min(cap, len(labels))
    keyed = []
    for c, quota in zip(classes, quotas([len(members[c]) for c in classes], take)):
        picked = rng.permutation(members[c])[:quota]
        keyed += [((rank + 0.5) / quota, c, int(index)) for rank, index in enumerate(picked)]
    return [index for *_, index in sorted(keyed)]


def words_kept(options: ImdbOptions) -> tuple[int, int]:
    """(head words, tail words) that ``tail`` and ``head+tail`` keep; ``head`` cuts tokens, not words."""
    words = options.truncation_words or max(1, (options.max_length - 2) * 2 // 3)
    if options.truncation == "tail":
        return 0, words
    head = round(words * SUN_HEAD_SHARE)
    return head, words - head


def cut(text: str, head: int, tail: int) -> str:
    """The first ``head`` and last ``tail`` words of a review longer than both (joined by a space)."""
    words = text.split()
    if len(words) <= head + tail:
        return text
    return " ".join(words[:head] + (words[-tail:] if tail else []))


def subsample(rows: Rows, cap: int, options: ImdbOptions) -> tuple[Split, float]:
    """A cleaned, canonically ordered, stratified sample as a split, and the share of its reviews cut on words."""
    pairs = sorted(zip(map(clean, rows[0]), rows[1]))
    chosen = [pairs[i] for i in stratified([label for _, label in pairs], cap, options.sample_seed)]
    texts = [text for text, _ in chosen]
    if options.truncation != "head":
        head, tail = words_kept(options)
        texts = [cut(text, head, tail) for text in texts]
    changed = sum(new != old for new, (old, _) in zip(texts, chosen))
    return Split(tuple(texts), tuple(label for _, label in chosen)), changed / max(1, len(chosen))


def truncation_protocol(options: ImdbOptions, cut_train: float, cut_eval: float) -> dict[str, str | float]:
    """How long reviews were cut, for every row's extras."""
    if options.truncation == "head":
        return {"truncation": "head: the tokenizer keeps the first max_length tokens"}
    head, tail = words_kept(options)
    return {"truncation": f"{options.truncation}: whitespace words kept before tokenizing, then max_length tokens",
            "head_words": head, "tail_words": tail, "cut_train": round(cut_train, 4), "cut_eval": round(cut_eval, 4)}


def load(request: TaskRequest) -> TaskData:
    options = ImdbOptions.of(request.options)
    found = local_rows(request.data_dir) if request.data_dir is not None else None
    if found is None:
        where = f"no {request.data_dir / FOLDER}" if request.data_dir is not None else "no --data-dir"
        found = hub_rows(where), f"hub {HUB}"
    rows, source = found
    train, cut_train = subsample(rows["train"], options.max_train_examples, options)
    evaluation, cut_eval = subsample(rows["test"], options.max_eval_examples, options)
    steps = math.ceil(options.epochs * len(train) / max(1, request.batch_size))
    protocol = {"source": source, "evaluation": "test split (IMDB has no validation split)", "cleaning": CLEANING,
                "max_length": options.max_length, **truncation_protocol(options, cut_train, cut_eval),
                "sampling": "stratified by label, seeded, labels interleaved", "sample_seed": options.sample_seed,
                "max_train_examples": options.max_train_examples, "max_eval_examples": options.max_eval_examples,
                "train_examples": len(train), "eval_examples": len(evaluation),
                "train_available": len(rows["train"][0]), "eval_available": len(rows["test"][0]),
                "epochs": options.epochs}
    return TaskData(train, evaluation, LABELS, "accuracy", options.max_length, steps, protocol=protocol)


@hookimpl
def harness_tasks() -> list[Task]:
    description = "IMDB movie-review sentiment (accuracy), long reviews truncated; hub or --data-dir"
    return [Task("imdb", load, description, ImdbOptions())]
