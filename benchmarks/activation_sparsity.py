"""Activation sparsity of GELU vs ReLU models: per-layer zeros of each FFN's hidden activation, and TEAL on both.

Runs the grid MiniLM × SST-2 × {finetune (GELU), relufy (ReLU, Mirzadeh et al.
2023)} × teal at a few sparsities through ``harness.run`` (rows in
``<out>/grid/leaderboard.csv``), then loads each fine-tuned model back from the
harness cache (the unit's own ``prepare``: the same model, validation batches
and calibration batches the rows used), and measures, per layer, the fraction
of exact zeros and of near-zeros (``|h| <= eps``) of the FFN hidden activation
on the validation sentences, dense and with the teal thresholds (re-calibrated
with the same pruner record, seed and calibration batches). Writes
``<out>/activation_sparsity.csv`` (adapter, activation, sparsity, layer,
zero_frac, near_zero_frac, accuracy) and ``<out>/activation_sparsity.png``.

    python benchmarks/activation_sparsity.py --out runs/activation-sparsity [--data-dir ../shared/data]
    python benchmarks/activation_sparsity.py --out /tmp/act --train-steps 2 --eval-limit 32 --calib-examples 32  # smoke
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import pandas as pd

import harness
from harness import surgery
from harness.api import Result

ADAPTERS = ("finetune", "relufy")
SPARSITIES = (0.5, 0.7, 0.9)
COLUMNS = ["adapter", "activation", "sparsity", "layer", "zero_frac", "near_zero_frac", "accuracy"]


def units(result: Result) -> list[Any]:
    """One prepared unit per adapter of the grid: its fine-tuned model loaded from the harness cache."""
    from harness.cells import unit_specs
    from harness.planning import make_plan
    from harness.plugins import load_registry, parse_options
    from harness.tensorboard import Scalars
    from harness.unit import cache_of, make_unit

    registry = load_registry()
    plan = make_plan(result.config, registry, parse_options(result.config.grid.options, registry))
    found = []
    for spec in unit_specs(plan):
        unit = make_unit(plan, spec, lambda row: None, Scalars(None), cache_of(plan))
        unit.prepare()
        restore_activation(unit)
        found.append(unit)
    return found


def restore_activation(unit: Any) -> None:
    """A cached fine-tune is loaded into the pretrained architecture: put back the activation its adapter chose."""
    import json

    config = json.loads(unit.adapted.get("adapter_config") or "{}")
    wanted = config.get("activation")
    if wanted and surgery.ffn_activation_name(unit.model) != wanted:
        surgery.set_ffn_activation(unit.model, wanted)


def measured(unit: Any, model: Any, sparsity: float, eps: float) -> list[dict[str, Any]]:
    """Per-layer rows: zero and near-zero fractions on the validation batches, and the model's accuracy."""
    accuracy = unit.feed.quality(model, unit.eval_batches).score
    stats = surgery.ffn_activation_stats(model, unit.eval_batches, eps=eps)
    activation = surgery.ffn_activation_name(model)
    return [{"adapter": unit.adapter.name, "activation": activation, "sparsity": sparsity, "layer": layer,
             "zero_frac": round(s.zero_fraction, 6), "near_zero_frac": round(s.near_zero_fraction, 6),
             "accuracy": round(accuracy, 6)} for layer, s in enumerate(stats)]


def thresholded(unit: Any, sparsity: float) -> Any:
    """A copy of the unit's model with teal's thresholds, calibrated as the grid's cell did (record, seed, data)."""
    import torch

    from harness.plugins import load_registry, options_for
    from harness.records import PruneRequest

    pruner = load_registry().get("pruner", "teal")
    model = copy.deepcopy(unit.model)
    layers = len(surgery.down_projections(model))
    request = PruneRequest(torch.zeros(layers), sparsity, options_for(pruner, unit.plan.overrides), unit.seed,
                           model=model, batches=unit.calibration)
    keep = pruner.compute_mask(request)
    return unit.plan.granularity(pruner).apply(model, keep)


def analyse(result: Result, sparsities: tuple[float, ...], eps: float) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for unit in units(result):
        rows += measured(unit, unit.model, 0.0, eps)
        for sparsity in sparsities:
            rows += measured(unit, thresholded(unit, sparsity), sparsity, eps)
    return pd.DataFrame(rows, columns=COLUMNS)


def plot(frame: pd.DataFrame, path: Path, eps: float) -> bool:
    """Left: dense per-layer zero / near-zero fractions, GELU vs ReLU; right: accuracy vs activation sparsity."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (layers, tradeoff) = plt.subplots(1, 2, figsize=(11, 4))
    for (adapter, activation), group in frame.groupby(["adapter", "activation"], sort=False):
        dense = group[group["sparsity"] == 0]
        line = layers.plot(dense["layer"], dense["zero_frac"], marker="o", label=f"{adapter} ({activation}): == 0")
        layers.plot(dense["layer"], dense["near_zero_frac"], marker="x", linestyle="--", color=line[0].get_color(),
                    label=f"{adapter} ({activation}): |h| <= {eps:g}")
        means = group.groupby("sparsity").agg(zero_frac=("zero_frac", "mean"), accuracy=("accuracy", "first"))
        tradeoff.plot(means["zero_frac"], means["accuracy"], marker="o", color=line[0].get_color(),
                      label=f"{adapter} ({activation}) + teal")
    layers.set(xlabel="layer", ylabel="fraction of FFN hidden activation", title="dense models", ylim=(0, 1))
    tradeoff.set(xlabel="exact zeros of the FFN hidden activation (mean over layers)", ylabel="validation accuracy",
                 title="teal thresholds at 0 (dense) and each target")
    layers.legend(fontsize=7)
    tradeoff.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def run_grid(args: argparse.Namespace) -> Result:
    settings: dict[str, Any] = {"calib_examples": args.calib_examples, "latency_batch": args.latency_batch,
                                "latency_tokens": args.latency_tokens}
    if args.train_steps is not None:
        settings["train_steps"] = args.train_steps
    if args.eval_limit is not None:
        settings["eval_limit"] = args.eval_limit
    return harness.run(models=[args.model], tasks=[args.task], data_dir=args.data_dir,
                       plugins=[*ADAPTERS, "teal"], sparsities=list(args.sparsities), seeds=[args.seed],
                       out=args.out / "grid", command="benchmarks/activation_sparsity.py", **settings)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/activation-sparsity"))
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--sparsities", type=lambda s: tuple(float(x) for x in s.split(",")), default=SPARSITIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", type=float, default=0.01, help="near-zero: |h| <= eps")
    parser.add_argument("--train-steps", type=int, default=None, help="default: the task's budget")
    parser.add_argument("--eval-limit", type=int, default=None, help="default: the whole validation split")
    parser.add_argument("--calib-examples", type=int, default=512)
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--latency-tokens", type=int, default=128)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    result = run_grid(args)
    print(result.summary())
    frame = analyse(result, tuple(args.sparsities), args.eps)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "activation_sparsity.csv", index=False)
    drawn = plot(frame, args.out / "activation_sparsity.png", args.eps)
    summary = frame.groupby(["adapter", "activation", "sparsity"]).agg(
        zero_frac=("zero_frac", "mean"), near_zero_frac=("near_zero_frac", "mean"), accuracy=("accuracy", "first"))
    print(summary.round(4).to_string())
    rows = result.leaderboard
    print(rows[["adapter", "pruner", "sparsity", "achieved_sparsity", "score", "speedup"]].to_string(index=False))
    print(f"wrote {args.out / 'activation_sparsity.csv'}" + ("" if drawn else " (matplotlib missing: no plot)"))


if __name__ == "__main__":
    main()
