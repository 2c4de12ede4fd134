"""Task ``sst2``: GLUE SST-2 binary sentiment, from the hub or a local copy (``--data-dir``).

Local layout: ``<data-dir>/sst2/train.tsv`` and ``validation.tsv`` with columns
``sentence`` and ``label`` (as in ../shared/data).
"""

from __future__ import annotations

import dataclasses

from harness import Task, TaskData, TaskRequest, hookimpl

LABELS = ("negative", "positive")
HUB = ("nyu-mll/glue", "sst2")


def load(request: TaskRequest) -> TaskData:
    from harness import data

    max_length = int(request.options.get("max_length", 64))
    if request.data_dir is not None:
        loaded = data.load_local_task(request.data_dir / "sst2", ["sentence"], "label", LABELS, "accuracy", max_length)
    else:
        loaded = data.load_hub_task(*HUB, ["sentence"], "label", LABELS, "accuracy", max_length)
    return dataclasses.replace(loaded, train_steps=int(request.options.get("train_steps", 600)))


@hookimpl
def harness_tasks() -> list[Task]:
    return [Task(name="sst2", load=load, description="GLUE SST-2 sentiment (accuracy)", options={"max_length": 64, "train_steps": 600})]
