"""Every registered plugin (built-in or installed) passes the shared conformance suite."""

from __future__ import annotations

import os

import pytest
from conftest import SHARED_DATA

from harness import conformance
from harness.errors import UsageError
from harness.records import TaskRequest

ITEMS = conformance.registered()
# where the suite puts models and batches: the CPU here and in CI; HARNESS_TEST_DEVICE=cuda on a GPU machine
DEVICE = os.environ.get("HARNESS_TEST_DEVICE", "cpu")


def test_every_role_has_a_builtin() -> None:
    roles = {item.role for item in ITEMS if item.dist.startswith("prune-harness")}
    assert roles == {"scorer", "pruner", "adapter", "task", "granularity"}


def tiny_imdb(folder) -> None:
    """IMDB is not in ../shared/data (and the hub is not reachable in CI): a small local copy of its layout."""
    (folder / "imdb").mkdir(parents=True)
    words = ["a fine film", "dull and long", "great acting", "a waste of time"]
    for split in ("train", "test"):
        lines = ["text\tlabel", *(f"{words[i % 4]} number {i}<br />more\t{int(i % 4 in (0, 2))}" for i in range(40))]
        (folder / "imdb" / f"{split}.tsv").write_text("\n".join(lines) + "\n")


LOCAL_COPIES = {"imdb": tiny_imdb}  # built-in tasks whose data ../shared/data does not hold


def tiny_lm_eval(folder) -> dict:
    """lm-eval evaluates the tasks a user names: two small local ones (SST-2 as JSONL, a task YAML each)."""
    pytest.importorskip("lm_eval")
    from test_lm_eval import TASKS, local_tasks

    return {"tasks": ",".join(str(local_tasks(folder) / f"{name}.yaml") for name in TASKS)}


LOCAL_OPTIONS = {"lm-eval": tiny_lm_eval}  # built-in tasks that need options to load anything


@pytest.mark.parametrize("item", ITEMS, ids=conformance.item_id)
def test_conformance(item, tmp_path) -> None:
    if item.role == "task":
        local = SHARED_DATA if SHARED_DATA.is_dir() else None
        if item.record.name in LOCAL_COPIES and item.dist.startswith("prune-harness"):
            LOCAL_COPIES[item.record.name](tmp_path)
            local = tmp_path
        options = dict(item.record.options)
        if item.record.name in LOCAL_OPTIONS and item.dist.startswith("prune-harness"):
            options.update(LOCAL_OPTIONS[item.record.name](tmp_path))
        request = TaskRequest(local, 0, options)
        try:
            conformance.check_plugin(item.record, request=request)
        except UsageError as error:
            if local is not None:
                raise
            pytest.skip(f"no ../shared/data and no hub: {error}")
    else:
        conformance.check_plugin(item.record, device=DEVICE)


def test_conformance_catches_a_broken_scorer() -> None:
    import torch

    from harness import Scorer

    broken = Scorer("broken", "head", lambda request: torch.full((2, 4), float("nan")))
    with pytest.raises(AssertionError, match="finite"):
        conformance.check_plugin(broken)


def test_registered_can_keep_one_distribution() -> None:
    from harness import Scorer, hookimpl

    class Mine:
        @hookimpl
        def harness_scorers(self):
            return [Scorer("mine", "head", lambda request: None)]

    everything = conformance.registered((Mine(),))
    builtin = conformance.registered(dist="prune_harness")  # any spelling pip accepts
    assert {i.source for i in builtin} == {"prune-harness"} and len(builtin) == len(everything) - 1
    only_mine = conformance.registered((Mine(),), dist="not-installed")
    assert [i.record.name for i in only_mine] == ["mine"]


def test_conformance_catches_a_granularity_whose_mask_and_removal_disagree() -> None:
    import dataclasses
    from contextlib import nullcontext

    granularity = conformance.granularity_of("head")
    lying = dataclasses.replace(granularity, name="lying-heads", mask=lambda model, keep: nullcontext())
    conformance.check_plugin(granularity)
    with pytest.raises(AssertionError, match="masking and applying give the same outputs"):
        conformance.check_plugin(lying)
