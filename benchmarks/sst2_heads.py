"""Head pruning on real SST-2 with MiniLM: head-gradient vs random, quality and measured speed.

Runs (or reads) the grid minilm × sst2 × {head-gradient, random} × {0.25, 0.5, 0.75}
× seeds {0, 1, 2} and prints, from that one run: dense accuracy, accuracy mean ± sd
per method and sparsity, head-gradient minus random, and the measured speedup of
the half-pruned model beside its FLOP-proportional ideal.

    python benchmarks/sst2_heads.py [--data-dir ../shared/data] [--out runs/sst2-heads] [--from-csv CSV]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

import harness
from harness import measures, surgery
from harness.models import load_classifier, resolve

SPARSITIES = (0.25, 0.5, 0.75)


def flop_ideal(sparsity: float) -> float:
    """Dense FLOPs / FLOPs with the same fraction of heads removed from every layer of MiniLM."""
    model, _ = load_classifier(resolve("minilm"), ("negative", "positive"), seed=0)
    inputs = measures.latency_input(model)
    dense = measures.forward_flops(model, inputs)
    geometry = surgery.head_geometry(model)
    keep = torch.ones(geometry.num_layers, max(geometry.heads_per_layer), dtype=torch.bool)
    keep[:, : round(sparsity * keep.shape[1])] = False
    return dense / measures.forward_flops(surgery.remove_heads(model, keep), inputs)


def report(frame: pd.DataFrame) -> None:
    ok = frame[frame["status"] == "ok"]
    dense = ok[ok["sparsity"] == 0]["score"]
    print(f"cells: {len(frame)} ({len(ok)} ok); seeds {sorted(int(s) for s in ok['seed'].unique())}")
    print(f"dense accuracy: {dense.mean():.4f} ± {dense.std():.4f} (n={len(dense)}; target mean >= 0.85)")
    pruned = ok[ok["sparsity"] > 0]
    table = pruned.groupby(["scorer", "sparsity"])["score"].agg(["mean", "std", "count"]).unstack("scorer")
    print("\naccuracy mean ± sd over seeds:")
    for sparsity, row in table.iterrows():
        cells = [f"{s}: {row[('mean', s)]:.4f} ± {row[('std', s)]:.4f}" for s in ("head-gradient", "random")]
        gap = row[("mean", "head-gradient")] - row[("mean", "random")]
        print(f"  {sparsity:.2f} heads removed  " + "   ".join(cells) + f"   head-gradient - random: {100 * gap:+.2f} points")
    speed = pruned.groupby(["scorer", "sparsity"])["speedup"].mean().unstack("scorer")
    print("\nmeasured speedup vs dense (batch 32 x 128 tokens, mean over seeds; FLOP-proportional ideal):")
    for sparsity, row in speed.iterrows():
        print(f"  {sparsity:.2f}  " + "  ".join(f"{s}: {row[s]:.3f}x" for s in speed.columns) + f"  ideal {flop_ideal(sparsity):.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("runs/sst2-heads"))
    parser.add_argument("--from-csv", type=Path, default=None, help="analyse an existing leaderboard instead")
    args = parser.parse_args()
    csv = args.from_csv
    if csv is None:
        result = harness.run(tasks=["sst2"], data_dir=args.data_dir, plugins=["head-gradient", "random"],
                             seeds=[0, 1, 2], sparsities=SPARSITIES, out=args.out, command="benchmarks/sst2_heads.py")
        report(result.leaderboard)
        return
    report(pd.read_csv(csv, keep_default_na=False))


if __name__ == "__main__":
    main()
