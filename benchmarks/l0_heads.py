"""L0 hard-concrete head gates vs head-gradient vs random at equal head budgets, on real SST-2.

Runs (or reads) minilm × sst2 × {l0-gates, head-gradient, random} × {0.25, 0.5, 0.75}
× seeds {0, 1, 2} in one leaderboard and prints accuracy mean ± sd per method and
sparsity, L0 minus random and minus head-gradient, the L0 training cost, whether
the gates converged (share of heads with P(open) < 0.05 or > 0.95) and whether the
head budget was met exactly.

    python benchmarks/l0_heads.py [--data-dir ../shared/data] [--out runs/l0-heads] [--from-csv CSV]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

import harness

METHODS = ("l0-gates", "head-gradient", "random")
SPARSITIES = (0.25, 0.5, 0.75)


def report(frame: pd.DataFrame) -> None:
    ok = frame[frame["status"] == "ok"]
    print(f"cells: {len(frame)} ({len(ok)} ok, {len(frame) - len(ok)} failed)")
    dense = ok[ok["sparsity"] == 0]["score"]
    print(f"dense accuracy: {dense.mean():.4f} ± {dense.std():.4f} (n={len(dense)})")
    pruned = ok[ok["sparsity"] > 0]
    stats = pruned.groupby(["sparsity", "scorer"])["score"].agg(["mean", "std", "count"])
    print("\naccuracy mean ± sd over seeds (heads removed):")
    for sparsity in SPARSITIES:
        line = [f"{m}: {stats.loc[(sparsity, m), 'mean']:.4f} ± {stats.loc[(sparsity, m), 'std']:.4f}" for m in METHODS]
        l0 = stats.loc[(sparsity, "l0-gates"), "mean"]
        gaps = [f"L0 - {m}: {100 * (l0 - stats.loc[(sparsity, m), 'mean']):+.2f} pts" for m in METHODS[1:]]
        print(f"  {sparsity:.2f}  " + "   ".join(line) + "   |  " + ", ".join(gaps))
    l0 = pruned[pruned["scorer"] == "l0-gates"]
    extras = pd.DataFrame([json.loads(e) for e in l0["extras"]], index=l0.index)
    budget_met = (l0["heads_kept"] == (l0["heads_total"] - (l0["sparsity"] * l0["heads_total"]).round())).all()
    print(f"\nL0 training cost (scoring_s): {l0['scoring_s'].mean():.1f} s mean per (seed, sparsity), "
          f"{l0['scoring_s'].sum():.0f} s in all; fine-tuning {ok[ok['sparsity'] == 0]['train_s'].mean():.0f} s per seed")
    print(f"gates converged (share of heads with P(open) < 0.05 or > 0.95): "
          f"min {extras['l0/converged_fraction'].min():.3f}, mean {extras['l0/converged_fraction'].mean():.3f}")
    joined = extras.join(l0[["sparsity", "heads_total"]])
    budgets = [f"{s:.2f}: {g['l0/expected_l0'].mean():.2f} of {g['heads_total'].iloc[0] - round(s * g['heads_total'].iloc[0])}"
               for s, g in joined.groupby("sparsity")]
    print("expected open heads at the end vs budget: " + ", ".join(budgets))
    print(f"head budget met exactly in every L0 row: {bool(budget_met)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("runs/l0-heads"))
    parser.add_argument("--from-csv", type=Path, default=None, help="analyse an existing leaderboard instead")
    args = parser.parse_args()
    csv = args.from_csv
    if csv is None:
        result = harness.run(tasks=["sst2"], data_dir=args.data_dir, plugins=list(METHODS), seeds=[0, 1, 2],
                             sparsities=SPARSITIES, out=args.out, command="benchmarks/l0_heads.py")
        report(result.leaderboard)
        return
    report(pd.read_csv(csv, keep_default_na=False))


if __name__ == "__main__":
    main()
