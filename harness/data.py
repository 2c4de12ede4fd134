"""Task data: loading tables (local files or the hub) with ``datasets``, and the tasks task files describe."""

from __future__ import annotations

import csv
import difflib
from pathlib import Path
from typing import Any, Sequence

from harness import task_files
from harness.errors import UsageError
from harness.records import Split, Task, TaskData, TaskRequest

_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {  # a task file's format: -> the datasets builder and its options
    "csv": ("csv", {}),
    "tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    "json": ("json", {}),
    "jsonl": ("json", {}),
}
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}
# A byte-order mark, and one decoded as Latin-1/cp1252 then saved again as UTF-8 (an Excel or Windows round trip).
_BOMS = ("\ufeff", "\u00ef\u00bb\u00bf")


def strip_bom(text: str) -> str:
    """``text`` without the byte-order marks (plain or double-encoded) a Windows round trip leaves at its start."""
    while text.startswith(_BOMS):
        text = text.removeprefix(_BOMS[0]).removeprefix(_BOMS[1])
    return text


def table_format(path: Path, fmt: str | None = None) -> str:
    """How to read ``path``: ``fmt`` (a task file's ``format:``), else its suffix."""
    if fmt is not None:
        if fmt not in _BUILDERS:
            raise UsageError(f"{path}: format {fmt!r} is not one of {', '.join(_BUILDERS)}")
        return fmt
    if path.suffix.lower() not in _SUFFIXES:
        raise UsageError(f"{path}: cannot tell a table's format from the name {path.name!r}: add format: "
                         f"({', '.join(_BUILDERS)}) to the task file, or name it .csv, .tsv, .json or .jsonl")
    return _SUFFIXES[path.suffix.lower()]


def read_rows(path: Path, column_names: Sequence[str] | None = None, fmt: str | None = None) -> Any:
    """A local CSV/TSV/JSON(L) file as a ``datasets.Dataset``; TSV is read without quoting.

    ``fmt`` (csv, tsv, json, jsonl) overrides the suffix, so a tab-separated
    ``.txt`` reads as ``tsv``. A byte-order mark on the header is dropped from the
    first column's name. ``datasets`` keeps an Arrow copy of every file it reads:
    it goes under the harness cache (``$HARNESS_CACHE/datasets``), not ``~/.cache/huggingface``.
    """
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    builder, options = _BUILDERS[table_format(path, fmt)]
    kwargs = dict(options)
    if column_names and builder == "csv":
        kwargs.update(header=None, names=list(column_names))
    import datasets

    from harness.cache import default_root

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    cache = default_root() / "datasets"  # Arrow copies of the user's files belong with the harness's cache
    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(cache), **kwargs)
    except Exception as error:  # datasets wraps parser errors in several types
        raise UsageError(f"{path}: cannot read ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    first = rows.column_names[0] if rows.column_names else ""
    clean = strip_bom(first)
    if clean != first and clean and clean not in rows.column_names:
        rows = rows.rename_column(first, clean)
    return rows


def missing_column(where: str, column: str, columns: Sequence[str]) -> UsageError:
    """The error for a column a table lacks, naming the closest one it has (case aside): typos are the usual cause."""
    lowered = {str(c).lower(): str(c) for c in columns}
    close = difflib.get_close_matches(column.lower(), list(lowered), n=1)
    hint = f"did you mean {lowered[close[0]]!r}? " if close else ""
    return UsageError(f"{where}: no column {column!r} ({hint}columns: {', '.join(map(str, columns))})")


def to_split(
    rows: Any,
    text_columns: Sequence[str],
    label_column: str,
    label_names: Sequence[str],
    where: str,
) -> Split:
    """Rows to a :class:`Split`; labels may be integers or the label names themselves."""
    for column in (*text_columns, label_column):
        if column not in rows.column_names:
            raise missing_column(where, column, rows.column_names)
    index = {str(name): i for i, name in enumerate(label_names)}
    labels = []
    for value in rows[label_column]:
        key = str(value).strip()
        if key in index:
            labels.append(index[key])
        elif key.lstrip("-").isdigit() and 0 <= int(key) < len(label_names):
            labels.append(int(key))
        else:
            raise UsageError(f"{where}: label {value!r} is not one of {', '.join(index)}")
    texts = [tuple("" if t is None else str(t) for t in rows[c]) for c in text_columns]
    return Split(texts[0], tuple(labels), texts[1] if len(texts) > 1 else None)


def load_local_task(
    directory: Path,
    text_columns: Sequence[str],
    label_column: str,
    label_names: Sequence[str],
    metric: str = "accuracy",
    max_length: int = 128,
    column_names: Sequence[str] | None = None,
) -> TaskData:
    """``<directory>/train.tsv`` and ``validation.tsv`` (the GLUE layout of ../shared/data)."""
    splits = []
    for name in ("train", "validation"):
        path = directory / f"{name}.tsv"
        splits.append(to_split(read_rows(path, column_names), text_columns, label_column, label_names, str(path)))
    return TaskData(splits[0], splits[1], tuple(label_names), metric, max_length)


def load_hub_task(
    path: str,
    config: str | None,
    text_columns: Sequence[str],
    label_column: str,
    label_names: Sequence[str],
    metric: str = "accuracy",
    max_length: int = 128,
) -> TaskData:
    """A task from the Hugging Face hub (needs a network or a warm ``datasets`` cache)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        data = datasets.load_dataset(path, config)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"cannot load {path}/{config} from the hub ({first}); pass --data-dir for local files") from None
    splits = [to_split(data[s], text_columns, label_column, label_names, f"{path}:{s}") for s in ("train", "validation")]
    return TaskData(splits[0], splits[1], tuple(label_names), metric, max_length)


def _take(split: Split, idx: Sequence[int]) -> Split:
    """The examples of ``split`` at ``idx``, in that order (text pairs and labels kept together)."""
    text_b = tuple(split.text_b[i] for i in idx) if split.text_b is not None else None
    labels = tuple(split.labels[i] for i in idx) if split.labels else ()
    return Split(tuple(split.text_a[i] for i in idx), labels, text_b)


def _stratified(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    train_idx, val_idx = train_test_split(
        list(range(len(split))), test_size=fraction, random_state=seed, stratify=list(split.labels) or None
    )
    return _take(split, train_idx), _take(split, val_idx)


def cap_split(split: Split, limit: int, seed: int) -> tuple[Split, str]:
    """At most ``limit`` examples of ``split`` (kept in their order) and how they were drawn, for the protocol.

    Labelled: a seeded sample stratified by label (scikit-learn; each class's
    count within one of its share). Unlabelled, or too few of a class to
    stratify: the first ``limit`` after a seeded shuffle.
    """
    total = len(split)
    if total <= limit:
        return split, f"all {total} (no more than max_train_examples)"
    kept: list[int] = []
    if split.labels:
        from sklearn.model_selection import train_test_split

        try:
            kept = train_test_split(list(range(total)), train_size=limit, random_state=seed,
                                    stratify=list(split.labels))[0]
        except ValueError:  # a class of one, or fewer kept or left out than there are classes
            pass
    how = "stratified by label" if kept else "seeded shuffle"
    if not kept:
        import numpy as np

        kept = np.random.default_rng(seed).permutation(total)[:limit].tolist()
        how += " (too few examples of a class to stratify)" if split.labels else ""
    return _take(split, sorted(kept)), f"{limit} of {total}, {how}, split_seed {seed}"


def read_texts(
    path: Path, column: str = "text", column_names: Sequence[str] | None = None, fmt: str | None = None
) -> Split:
    """Unlabelled texts for language modelling: paragraphs of a plain-text file, or one column of a table.

    A file is a table when ``fmt`` is given or its suffix is a table's; any other
    file is split at blank lines (a file without any at lines), a byte-order mark dropped.
    """
    if not path.is_file():
        raise UsageError(f"text file not found: {path}")
    if fmt is not None or path.suffix.lower() in _SUFFIXES:
        rows = read_rows(path, column_names, fmt)
        if column not in rows.column_names:
            raise missing_column(str(path), column, rows.column_names)
        texts = [str(t) for t in rows[column] if t is not None and str(t).strip()]
    else:
        raw = strip_bom(path.read_text(encoding="utf-8"))
        pieces = raw.split("\n\n") if "\n\n" in raw.strip() else raw.splitlines()
        texts = [p.strip() for p in pieces if p.strip()]
    if not texts:
        raise UsageError(f"{path}: no text in it")
    return Split(tuple(texts), ())


def load_task_file(path: Path) -> Task:
    """A classification or causal-LM task described by a YAML/JSON file (paths relative to it).

    The file is checked now (plan time, see :mod:`harness.task_files`); its tables are read when the task loads.
    """
    spec = task_files.read_spec(path)
    language = spec.get("kind") == "causal-lm"
    written, names = task_files.label_order(spec)
    fmt = spec.get("format")

    def read(key: str) -> Split:
        file = (path.parent / spec[key]).resolve()
        if language:
            return read_texts(file, spec["text_columns"][0], spec.get("column_names"), fmt)
        rows = read_rows(file, spec.get("column_names"), fmt)
        split = to_split(rows, spec["text_columns"], spec["label_column"], written, str(file))
        return task_files.reorder_labels(split, written, names)

    def load(request: TaskRequest) -> TaskData:
        seed = int(spec.get("split_seed", 0))
        train = read("train")
        if "validation" in spec:
            validation = read("validation")
        else:
            train, validation = _stratified(train, float(spec["validation_fraction"]), seed)
        protocol = task_files.protocol(spec)
        if "max_train_examples" in spec:  # after the validation split: the cap leaves validation as it was
            train, protocol["train_subsample"] = cap_split(train, int(spec["max_train_examples"]), seed)
        steps = int(spec["train_steps"]) if "train_steps" in spec else None
        return TaskData(train, validation, names, spec.get("metric", "accuracy"), int(spec.get("max_length", 128)),
                        steps, "causal-lm" if language else "classification", protocol)

    return Task(name=task_files.task_name(path, spec), load=load, description=f"task file {path}")


def fingerprint(data: Any) -> str:
    """A hash of everything a task's data determines (texts, labels, metric, length, protocol): part of every key."""
    import hashlib
    import json

    splits = [(s.text_a, s.text_b, s.labels) for s in (data.train, data.validation)]
    blob = json.dumps([splits, data.label_names, data.metric, data.max_length, dict(data.protocol)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
