"""Task files: the YAML/JSON a user describes their own data with, parsed and checked field by field.

Only the file itself is read here (so a bad file fails at plan time, before any
data or model loads); :func:`harness.data.load_task_file` reads the tables it names.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.errors import UsageError
from harness.records import METRICS, Split

TASK_FILE_FIELDS = (
    "name", "kind", "train", "validation", "validation_fraction", "split_seed", "text_columns", "label_column",
    "label_names", "metric", "max_length", "column_names", "train_steps", "format", "positive_label",
    "max_train_examples",
)
FORMATS = ("csv", "tsv", "json", "jsonl")  # a table's ``format:``; harness.data reads each
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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


def _parse(path: Path) -> Any:
    """The file's YAML or JSON; a syntax error names its line and column, where a newcomer must look."""
    import yaml

    language = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is no syntax error
        return _yaml_without_booleans(text) if language == "YAML" else json.loads(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = error.problem or error.context or type(error).__name__
        raise UsageError(f"{path}: not valid YAML ({where}{problem})") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    except Exception as error:  # not UTF-8, a YAML error without a position
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{path}: not valid {language} ({first})") from None


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


def read_spec(path: Path) -> dict[str, Any]:
    """The checked fields of a task file, defaults of causal-LM tasks filled in."""
    if not path.is_file():
        raise UsageError(f"task file not found: {path}")
    spec = _parse(path)
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
    _check_format_and_sampling(path, spec)
    _check_positive_label(path, spec)
    return spec


def _check_format_and_sampling(path: Path, spec: dict[str, Any]) -> None:
    """``format:`` (any case) must be a table format; ``max_train_examples:`` a positive whole number."""
    if "format" in spec:
        fmt = str(spec["format"]).lower()
        if fmt not in FORMATS:
            raise UsageError(f"{path}: format {spec['format']!r} is not one of {', '.join(FORMATS)}")
        spec["format"] = fmt
    cap = spec.get("max_train_examples", 1)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise UsageError(f"{path}: max_train_examples must be a positive whole number, not {cap!r}")


def _check_positive_label(path: Path, spec: Mapping[str, Any]) -> None:
    """``positive_label`` picks the class binary F1 scores; anywhere else it would change nothing: an error."""
    if "positive_label" not in spec:
        return
    positive, names = str(spec["positive_label"]), [str(n) for n in spec.get("label_names", ())]
    if positive not in names:
        raise UsageError(f"{path}: positive_label {positive!r} is not one of the label_names ({', '.join(names)})")
    if spec.get("metric", "accuracy") != "f1" or len(names) != 2:
        raise UsageError(f"{path}: positive_label picks the class binary F1 scores: it needs metric: f1 and two "
                         f"label_names (accuracy, mcc and macro F1 do not depend on it)")


def label_order(spec: Mapping[str, Any]) -> tuple[list[str], tuple[str, ...]]:
    """The label names as written, and as the task uses them: ``positive_label`` second (the class F1 scores)."""
    written = [str(n) for n in spec.get("label_names", ())]
    if "positive_label" not in spec:
        return written, tuple(written)
    positive = str(spec["positive_label"])
    return written, (*[n for n in written if n != positive], positive)


def reorder_labels(split: Split, written: Sequence[str], order: Sequence[str]) -> Split:
    """``split`` with label indices into ``written`` (as the file's indices mean) turned into indices into ``order``."""
    if list(written) == list(order):
        return split
    new = [order.index(name) for name in written]
    return Split(split.text_a, tuple(new[label] for label in split.labels), split.text_b)


def protocol(spec: Mapping[str, Any]) -> dict[str, str | float]:
    """What the task's rows record of the file's choices: only fields it uses (older run ids stay as they were)."""
    entries: dict[str, str | float] = {}
    if "positive_label" in spec:
        entries["positive_label"] = str(spec["positive_label"])
    if "max_train_examples" in spec:
        entries["max_train_examples"] = int(spec["max_train_examples"])
    return entries
