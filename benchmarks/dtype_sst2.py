"""float32 against bfloat16 (or float16) on one grid: accuracy, latency and fine-tune time, seed by seed.

Why: ``--dtype`` becomes the default only where it is faster at no measured
accuracy cost. This runs the same grid (MiniLM on SST-2 by default: dense, head
pruning and global magnitude pruning at 50%, seeds 0-2) once per dtype, through
``harness.run`` with everything else equal, and prints per row the score and
prefill latency in each dtype, then the mean accuracy delta (with its sd over
seeds) and the latency and fine-tune time ratios (other / float32). The two
runs are sequential, so both see the same machine load; run it alone.

    OMP_NUM_THREADS=1 python benchmarks/dtype_sst2.py --data-dir ../shared/data --out runs/dtype

Numbers only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

KEYS = ["scorer", "pruner", "sparsity", "seed"]


def _grid(args: argparse.Namespace, dtype: str) -> object:
    import harness

    return harness.run(
        None, tasks=[args.task], data_dir=args.data_dir, seeds=args.seeds, sparsities=[0.5], dtype=dtype,
        device=args.device, plugins=args.plugins, baselines=False, out=str(Path(args.out) / dtype),
        train_steps=args.train_steps, command=f"benchmarks/dtype_sst2.py ({dtype})",
    )


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):+.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--plugins", nargs="+", default=["head-gradient", "heads", "magnitude", "global-unstructured"])
    parser.add_argument("--dtype", default="bfloat16", help="the dtype compared with float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-steps", type=int, default=None, help="default: the task's")
    parser.add_argument("--out", default="runs/dtype")
    args = parser.parse_args()
    frames = {dtype: _grid(args, dtype).rows.set_index(KEYS) for dtype in ("float32", args.dtype)}
    base, other = frames["float32"], frames[args.dtype]
    columns = ["score", "latency_ms", "train_s", "status"]
    joined = base[columns].merge(other[columns], left_index=True, right_index=True, suffixes=("", "_other"))
    print(f"\n{'row':<48} {'float32':>8} {args.dtype:>9} {'lat fp32':>9} {'lat ' + args.dtype[:4]:>9}")
    for key, row in joined.iterrows():
        label = f"{key[0]}/{key[1]}@{key[2]} seed {key[3]}"
        print(f"{label:<48} {row['score']:>8.4f} {row['score_other']:>9.4f} {row['latency_ms']:>9.1f} "
              f"{row['latency_ms_other']:>9.1f}")
    ok = joined[(joined["status"] == "ok") & (joined["status_other"] == "ok")]
    for (scorer, pruner), group in ok.groupby(level=["scorer", "pruner"]):
        deltas = (group["score_other"] - group["score"]).tolist()
        print(f"{scorer}/{pruner}: accuracy {args.dtype} - float32 {_mean_sd(deltas)} over {len(deltas)} seeds")
    dense = ok.xs(("none", "none"), level=["scorer", "pruner"])
    print(f"latency {args.dtype} / float32 (all rows, mean): {(ok['latency_ms_other'] / ok['latency_ms']).mean():.3f}")
    print(f"fine-tune time {args.dtype} / float32 (mean over seeds): "
          f"{(dense['train_s_other'] / dense['train_s']).mean():.3f}")


if __name__ == "__main__":
    main()
