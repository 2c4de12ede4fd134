"""Task data: loading tables (local files or the hub) with ``datasets``, task files, batches, metrics."""

from __future__ import annotations

import csv
import difflib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from harness.errors import UsageError
from harness.records import METRICS, Split, Task, TaskData, TaskRequest

if TYPE_CHECKING:
    pass

_FORMATS = {".tsv": "csv", ".csv": "csv", ".json": "json", ".jsonl": "json"}
TASK_FILE_FIELDS = (
    "name", "kind", "train", "validation", "validation_fraction", "split_seed", "text_columns", "label_column",
    "label_names", "metric", "max_length", "column_names", "train_steps",
)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def read_rows(path: Path, column_names: Sequence[str] | None = None) -> Any:
    """A local CSV/TSV/JSON(L) file as a ``datasets.Dataset``; TSV is read without quoting.

    ``datasets`` keeps an Arrow copy of every file it reads: it goes under the
    harness cache (``$HARNESS_CACHE/datasets``), not ``~/.cache/huggingface``.
    """
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    builder = _FORMATS.get(path.suffix.lower())
    if builder is None:
        raise UsageError(f"{path}: unsupported data format (use .tsv, .csv, .json or .jsonl)")
    kwargs: dict[str, Any] = {}
    if path.suffix.lower() == ".tsv":
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    if column_names and builder == "csv":
        kwargs.update(header=None, names=list(column_names))
    import datasets

    from harness.cache import default_root

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    cache = default_root() / "datasets"  # Arrow copies of the user's files belong with the harness's cache
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(cache), **kwargs)
    except Exception as error:  # datasets wraps parser errors in several types
        raise UsageError(f"{path}: cannot read ({type(error).__name__}: {str(error).splitlines()[0]})") from None


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
            raise UsageError(f"{where}: no column {column!r} (columns: {', '.join(rows.column_names)})")
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


def _stratified(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    train_idx, val_idx = train_test_split(
        list(range(len(split))), test_size=fraction, random_state=seed, stratify=list(split.labels) or None
    )

    def take(idx: list[int]) -> Split:
        text_b = tuple(split.text_b[i] for i in idx) if split.text_b is not None else None
        labels = tuple(split.labels[i] for i in idx) if split.labels else ()
        return Split(tuple(split.text_a[i] for i in idx), labels, text_b)

    return take(train_idx), take(val_idx)


def _yaml_without_booleans(text: str) -> Any:
    """YAML 1.1 reads label names such as ``no``/``yes`` as booleans: keep them as strings."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        key: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def _check_fields(path: Path, spec: Mapping[Any, Any]) -> None:
    """A misspelled field (``metrc``) would silently fall back to its default: name it and the closest field."""
    for key in spec:
        if key not in TASK_FILE_FIELDS:
            close = difflib.get_close_matches(str(key), TASK_FILE_FIELDS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"fields: {', '.join(TASK_FILE_FIELDS)}"
            raise UsageError(f"{path}: unknown field {key!r} ({hint})")


def task_name(path: Path, spec: Mapping[str, Any]) -> str:
    """The task's name (``name``, else the file's stem), a slug: it labels rows and names output files."""
    name = str(spec.get("name", path.stem))
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        where = "" if "name" in spec else " (from the file name; give a name: field)"
        raise UsageError(f"{path}: task name {name!r}{where} must start with a letter or digit and hold only "
                         "letters, digits, '.', '_' and '-' (no '..')")
    return name


def _task_file_spec(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise UsageError(f"task file not found: {path}")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            spec = _yaml_without_booleans(path.read_text())
        else:
            spec = json.loads(path.read_text())
    except Exception as error:
        raise UsageError(f"{path}: not valid YAML/JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise UsageError(f"{path}: a task file holds a mapping of fields")
    _check_fields(path, spec)
    if spec.get("kind", "classification") not in ("classification", "causal-lm"):
        raise UsageError(f"{path}: kind must be classification or causal-lm")
    if spec.get("kind") == "causal-lm":
        spec.setdefault("metric", "perplexity")
        spec.setdefault("text_columns", ["text"])
        required: tuple[str, ...] = ("train",)
    else:
        required = ("train", "text_columns", "label_column", "label_names")
    missing = [k for k in required if k not in spec]
    if missing:
        raise UsageError(f"{path}: missing field(s) {', '.join(missing)}")
    if "validation" not in spec and "validation_fraction" not in spec:
        raise UsageError(f"{path}: give either validation (a file) or validation_fraction")
    if spec.get("metric", "accuracy") not in METRICS:
        raise UsageError(f"{path}: metric must be one of {', '.join(METRICS)}")
    if (spec.get("kind") == "causal-lm") != (spec.get("metric") == "perplexity"):
        raise UsageError(f"{path}: perplexity is the metric of causal-lm tasks, and theirs only")
    columns = spec["text_columns"]
    if isinstance(columns, str):
        spec["text_columns"] = [columns]
    elif not (isinstance(columns, list) and 1 <= len(columns) <= 2):
        raise UsageError(f"{path}: text_columns takes one or two column names")
    if spec.get("kind") == "causal-lm" and len(spec["text_columns"]) != 1:
        raise UsageError(f"{path}: a causal-lm task reads one text column")
    return spec


def read_texts(path: Path, column: str = "text", column_names: Sequence[str] | None = None) -> Split:
    """Unlabelled texts for language modelling: paragraphs of a plain-text file, or one column of a table.

    A ``.txt``/``.md`` file is split at blank lines (a file without any splits at lines).
    """
    if not path.is_file():
        raise UsageError(f"text file not found: {path}")
    if path.suffix.lower() in _FORMATS:
        rows = read_rows(path, column_names)
        if column not in rows.column_names:
            raise UsageError(f"{path}: no column {column!r} (columns: {', '.join(rows.column_names)})")
        texts = [str(t) for t in rows[column] if t is not None and str(t).strip()]
    else:
        raw = path.read_text(encoding="utf-8")
        pieces = raw.split("\n\n") if "\n\n" in raw.strip() else raw.splitlines()
        texts = [p.strip() for p in pieces if p.strip()]
    if not texts:
        raise UsageError(f"{path}: no text in it")
    return Split(tuple(texts), ())


def load_task_file(path: Path) -> Task:
    """A classification or causal-LM task described by a YAML/JSON file (paths relative to it)."""
    spec = _task_file_spec(path)
    base = path.parent

    language = spec.get("kind") == "causal-lm"

    def read(name: str) -> Split:
        file = (base / spec[name]).resolve()
        if language:
            return read_texts(file, spec["text_columns"][0], spec.get("column_names"))
        rows = read_rows(file, spec.get("column_names"))
        return to_split(rows, spec["text_columns"], spec["label_column"], [str(n) for n in spec["label_names"]], str(file))

    def load(request: TaskRequest) -> TaskData:
        train = read("train")
        if "validation" in spec:
            validation = read("validation")
        else:
            train, validation = _stratified(train, float(spec["validation_fraction"]), int(spec.get("split_seed", 0)))
        names = tuple(str(n) for n in spec.get("label_names", ()))
        steps = int(spec["train_steps"]) if "train_steps" in spec else None
        return TaskData(train, validation, names, spec.get("metric", "accuracy"), int(spec.get("max_length", 128)),
                        steps, "causal-lm" if language else "classification")

    return Task(name=task_name(path, spec), load=load, description=f"task file {path}")


def fingerprint(data: Any) -> str:
    """A hash of everything a task's data determines (texts, labels, metric, length, protocol): part of every key."""
    import hashlib
    import json

    splits = [(s.text_a, s.text_b, s.labels) for s in (data.train, data.validation)]
    blob = json.dumps([splits, data.label_names, data.metric, data.max_length, dict(data.protocol)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
