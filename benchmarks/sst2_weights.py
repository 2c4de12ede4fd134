"""Weight and FFN-neuron pruning on real SST-2 with MiniLM: achieved sparsity, methods vs random, speed.

Runs (or reads) minilm × sst2 × {magnitude, gradient, taylor, random-weight} ×
{unstructured, global-unstructured} and {magnitude, gradient, taylor, random}-neuron
× neurons, at sparsities 0.1-0.9, seeds 0, 1, 2, and prints from that one run:
achieved vs requested sparsity, accuracy mean ± sd, gradient/Taylor minus random,
global magnitude at 50% vs dense, and measured speedups beside FLOP ideals.

    python benchmarks/sst2_weights.py [--data-dir ../shared/data] [--out runs/sst2-weights] [--from-csv CSV]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import harness

SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)
PLUGINS = ("magnitude,gradient,taylor,random-weight,unstructured,global-unstructured,"
           "magnitude-neuron,gradient-neuron,taylor-neuron,random-neuron,neurons,finetune")


def _table(ok: pd.DataFrame, pruner: str, column: str = "score") -> pd.DataFrame:
    rows = ok[ok["pruner"] == pruner]
    return rows.groupby(["sparsity", "scorer"])[column].agg(["mean", "std"]).unstack("scorer")


def accuracy(ok: pd.DataFrame, pruner: str, random: str) -> None:
    table = _table(ok, pruner)
    print(f"\n{pruner}: accuracy mean ± sd over seeds (and minus {random}, points)")
    for sparsity, row in table.iterrows():
        scorers = [s for s in row.index.get_level_values(1).unique()]
        cells = [f"{s}: {row[('mean', s)]:.4f} ± {row[('std', s)]:.4f}" for s in scorers]
        gaps = [f"{s} {100 * (row[('mean', s)] - row[('mean', random)]):+.1f}" for s in scorers if s != random]
        print(f"  {sparsity:.1f}  " + "  ".join(cells) + "  | " + ", ".join(gaps))


def sparsity_check(ok: pd.DataFrame) -> None:
    weights = ok[ok["granularity"] == "weight"]
    error = (weights["achieved_sparsity"] - weights["sparsity"]).abs()
    print(f"unstructured cells: {len(weights)}; |achieved - requested| max {error.max():.5f} (target <= 0.005)")
    neurons = ok[ok["granularity"] == "neuron"]
    if len(neurons):
        gap = (neurons["achieved_sparsity"] - neurons["sparsity"]).abs().max()
        print(f"neuron cells: {len(neurons)}; |achieved - requested| max {gap:.5f}")


def speed(ok: pd.DataFrame, dense_gflops: float) -> None:
    print("\nmeasured speedup vs dense (batch 32 x 128, mean over seeds and scorers) | FLOP-proportional ideal:")
    for pruner, rows in ok[ok["sparsity"] > 0].groupby("pruner"):
        by = rows.groupby("sparsity").agg(speedup=("speedup", "mean"), gflops=("gflops", "mean"))
        cells = [f"{s:.1f}: {r.speedup:.3f}x | {dense_gflops / r.gflops:.3f}x" for s, r in by.iterrows()]
        print(f"  {pruner:20s} " + "  ".join(cells))


def report(frame: pd.DataFrame) -> None:
    ok = frame[frame["status"] == "ok"]
    dense = ok[ok["sparsity"] == 0]
    print(f"cells: {len(frame)} ({len(ok)} ok); seeds {sorted(int(s) for s in ok['seed'].unique())}")
    print(f"dense accuracy: {dense['score'].mean():.4f} ± {dense['score'].std():.4f}")
    sparsity_check(ok)
    for pruner, random in (("global-unstructured", "random-weight"), ("unstructured", "random-weight"),
                           ("neurons", "random-neuron")):
        if pruner in set(ok["pruner"]):
            accuracy(ok, pruner, random)
    glob = ok[(ok["scorer"] == "magnitude") & (ok["pruner"] == "global-unstructured") & (ok["sparsity"] == 0.5)]
    if len(glob):
        drop = 100 * (dense["score"].mean() - glob["score"].mean())
        print(f"\nglobal magnitude 50% unstructured: {glob['score'].mean():.4f}, {drop:.2f} points below dense "
              "(target <= 3)")
    speed(ok, float(dense["gflops"].mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("runs/sst2-weights"))
    parser.add_argument("--from-csv", type=Path, default=None, help="analyse an existing leaderboard instead")
    args = parser.parse_args()
    csv = args.from_csv
    if csv is None:
        result = harness.run(tasks=["sst2"], data_dir=args.data_dir, plugins=PLUGINS.split(","), seeds=[0, 1, 2],
                             sparsities=SPARSITIES, out=args.out, command="benchmarks/sst2_weights.py")
        report(result.leaderboard)
        return
    report(pd.read_csv(csv, keep_default_na=False))


if __name__ == "__main__":
    main()
