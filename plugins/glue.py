"""Tasks ``sst2``, ``cola`` and ``rte`` from GLUE: the hub, or local copies with ``--data-dir``.

Local layout (as in ../shared/data): ``<data-dir>/<task>/train.tsv`` and
``validation.tsv``. SST-2 has columns ``sentence``, ``label``; CoLA has no header
(source, label, original label, sentence); RTE has ``sentence1``, ``sentence2``
and labels ``entailment`` / ``not_entailment``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness import Options, Task, TaskData, TaskRequest, hookimpl, option


@dataclass(frozen=True)
class GlueTask:
    """Where one GLUE task's columns are, locally and on the hub, and its default budget."""

    name: str
    text_columns: tuple[str, ...]
    labels: tuple[str, ...]
    metric: str
    max_length: int
    train_steps: int
    local_columns: tuple[str, ...] | None = None  # for files without a header
    description: str = ""


@dataclass(frozen=True)
class GlueOptions(Options):
    """Options of every GLUE task; each task's record holds its own defaults (``GlueTask``)."""

    max_length: int = option(128, low=1, help="tokens per example after truncation")
    train_steps: int = option(300, low=0, help="default fine-tuning budget in steps (--train-steps overrides)")


TASKS = (
    GlueTask("sst2", ("sentence",), ("negative", "positive"), "accuracy", 64, 600,
             description="GLUE SST-2 sentiment (accuracy)"),
    GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), "mcc", 64, 600,
             ("source", "label", "original_label", "sentence"), "GLUE CoLA acceptability (Matthews corr.)"),
    GlueTask("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy", 128, 300,
             description="GLUE RTE entailment, sentence pairs (accuracy)"),
)


def loader(spec: GlueTask):
    def load(request: TaskRequest) -> TaskData:
        from harness import data

        options = GlueOptions.of(request.options, defaults(spec))
        columns = (spec.text_columns, "label", spec.labels, spec.metric, options.max_length)
        if request.data_dir is not None:
            loaded = data.load_local_task(request.data_dir / spec.name, *columns, column_names=spec.local_columns)
        else:
            loaded = data.load_hub_task("nyu-mll/glue", spec.name, *columns)
        return dataclasses.replace(loaded, train_steps=options.train_steps)

    return load


def defaults(spec: GlueTask) -> GlueOptions:
    """One task's option defaults: its own token length and budget."""
    return GlueOptions(max_length=spec.max_length, train_steps=spec.train_steps)


def load(request: TaskRequest) -> TaskData:
    """SST-2 (kept as a module-level function for direct use)."""
    return loader(TASKS[0])(request)


@hookimpl
def harness_tasks() -> list[Task]:
    return [Task(spec.name, loader(spec), spec.description, defaults(spec)) for spec in TASKS]
