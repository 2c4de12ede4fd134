"""The plugin contract: four hooks, one per role.

A plugin module implements any of these with ``@harness.hookimpl`` and is listed
under the ``harness`` entry-point group of its distribution. Each hook returns
the role records (see :mod:`harness.records`) the plugin contributes.
"""

from __future__ import annotations

from typing import Sequence

import pluggy

from harness.records import Adapter, Granularity, Pruner, Scorer, Task

PROJECT = "harness"
hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def harness_scorers() -> Sequence[Scorer]:
    """Return the scorers this plugin provides (importance of heads, weights or neurons)."""


@hookspec
def harness_pruners() -> Sequence[Pruner]:
    """Return the pruners this plugin provides (scores in, keep-mask out)."""


@hookspec
def harness_adapters() -> Sequence[Adapter]:
    """Return the adapters this plugin provides (fine-tuning, LoRA, recovery)."""


@hookspec
def harness_tasks() -> Sequence[Task]:
    """Return the tasks this plugin provides (data and metric)."""


@hookspec
def harness_granularities() -> Sequence[Granularity]:
    """Return the granularities this plugin provides (what a unit of pruning is: its shapes, surgery and scope)."""
