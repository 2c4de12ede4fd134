"""Every registered plugin (built-in or installed) passes the shared conformance suite."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA

from harness import conformance
from harness.errors import UsageError
from harness.records import TaskRequest

ITEMS = conformance.registered()


def test_every_role_has_a_builtin() -> None:
    roles = {item.role for item in ITEMS if item.dist.startswith("prune-harness")}
    assert roles == {"scorer", "pruner", "adapter", "task"}


@pytest.mark.parametrize("item", ITEMS, ids=conformance.item_id)
def test_conformance(item) -> None:
    if item.role == "task":
        local = SHARED_DATA if SHARED_DATA.is_dir() else None
        request = TaskRequest(local, 0, dict(item.record.options))
        try:
            conformance.check_plugin(item.record, request=request)
        except UsageError as error:
            if local is not None:
                raise
            pytest.skip(f"no ../shared/data and no hub: {error}")
    else:
        conformance.check_plugin(item.record)


def test_conformance_catches_a_broken_scorer() -> None:
    import torch

    from harness import Scorer

    broken = Scorer("broken", "head", lambda request: torch.full((2, 4), float("nan")))
    with pytest.raises(AssertionError, match="finite"):
        conformance.check_plugin(broken)
