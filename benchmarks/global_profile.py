"""Where global unstructured pruning puts its zeros: sparsity per weight group and layer, per scorer.

Global ranking compares importance across modules, so a scorer whose scale
differs between modules (|g| does: a module far from the loss has tiny
gradients) can empty some modules while barely touching others. This prints,
for a grid's fine-tuned model (from the harness cache, or trained once), the
share of each (layer, group) that global pruning zeroes at each sparsity, for
every ``normalize`` choice of the pruner (none, mean, lamp), and the modules it
empties most.

    python benchmarks/global_profile.py --tasks sst2 --data-dir ../shared/data --seeds 2 \\
        --plugins gradient,taylor,magnitude,global-unstructured --sparsities 0.1 0.5

Takes the same arguments as ``harness bench``: the grid runs through
``harness.run`` (rows in ``--out``), then the first model, task and seed are
profiled from the cache.
"""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd

import harness
from harness import PruneRequest, surgery
from harness.cells import unit_specs
from harness.cli import _config, build_parser
from harness.planning import make_plan
from harness.plugins import load_registry, parse_options
from harness.tensorboard import Scalars
from harness.unit import cache_of, make_unit


def module_table(unit: Any) -> pd.DataFrame:
    """(name, layer, group) of every weight-pruning target of the unit's model."""
    groups = surgery.module_groups(unit.model)
    names = unit.targets(unit.plan.granularities["weight"])
    rows = []
    for name in names:
        layer = next((int(part) for part in name.split(".") if part.isdigit()), -1)
        rows.append({"name": name, "layer": layer, "group": groups.get(name, "?")})
    return pd.DataFrame(rows)


def profile(unit: Any, scorer: Any, pruner: Any, sparsity: float, normalize: str) -> pd.Series:
    """Share of each target module's weights that the pruner zeroes."""
    scored = unit.scores(scorer, pruner, None)
    options = harness.options.resolve(pruner, {**unit.plan.overrides.get(pruner.name, {}), "normalize": normalize})
    keep = pruner.compute_mask(PruneRequest(scored.values, sparsity, options, unit.seed, model=unit.model))
    return pd.Series({name: 1.0 - float(mask.float().mean()) for name, mask in keep.items()})


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(["bench", *argv])
    config = _config(args)
    harness.run(config, command="benchmarks/global_profile.py")  # the grid's rows; its fine-tune and scores cached
    registry = load_registry(())
    plan = make_plan(config, registry, parse_options(config.grid.options, registry))
    unit = make_unit(plan, unit_specs(plan)[0], lambda row: None, Scalars(None), cache_of(plan))
    unit.prepare()
    table = module_table(unit)
    for scorer, pruner in plan.methods:
        if scorer is None or pruner.name != "global-unstructured":
            continue
        for sparsity in plan.sparsities:
            for normalize in ("none", "mean", "lamp"):
                table["pruned"] = table["name"].map(profile(unit, scorer, pruner, sparsity, normalize))
                grid = table.pivot_table(index="layer", columns="group", values="pruned")
                worst = table.nlargest(3, "pruned")
                print(f"\n{scorer.name}, global {sparsity:.0%}, normalize={normalize}: share zeroed per layer × group")
                print(grid.to_string(float_format=lambda v: f"{v:.3f}"))
                print("most emptied: " + ", ".join(f"{r.name} {r.pruned:.3f}" for r in worst.itertuples()))


if __name__ == "__main__":
    main(sys.argv[1:])
