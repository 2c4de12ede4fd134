"""``harness`` command line: ``bench`` runs a grid, ``list`` shows the installed plugins, ``report`` draws them.

Bad input is a one-line error and exit status 2; a grid with failed cells exits 1.
Heavy libraries are imported only once a command runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from harness.errors import UsageError

T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UsageError(message)


def _items(values: Sequence[str]) -> list[str]:
    """Accept both ``--x a,b`` and ``--x a b``."""
    return [item for value in values for item in value.split(",") if item.strip()]


def _typed(values: Sequence[str], kind: Callable[[str], T], what: str) -> tuple[T, ...]:
    parsed = []
    for item in _items(values):
        try:
            parsed.append(kind(item))
        except ValueError:
            raise UsageError(f"{what} {item!r} is not {'an integer' if kind is int else 'a number'}") from None
    return tuple(parsed)


def _bench_arguments(bench: argparse.ArgumentParser) -> None:
    from harness.bench import DEFAULT_ADAPTER, BenchConfig

    d = BenchConfig()  # one place for the defaults
    add = bench.add_argument
    add("--plugins", nargs="+", default=list(d.plugins),
        help="scorer/pruner/adapter names, or 'all' (every installed plugin); default: "
        f"{','.join(d.plugins)} with their random baselines, adapter {DEFAULT_ADAPTER}")
    add("--models", nargs="+", default=list(d.models), help="'minilm', a local model folder or a hub id")
    add("--tasks", nargs="+", default=list(d.tasks), help="task names (see 'harness list') or task files (.yaml/.json)")
    add("--sparsities", nargs="+", default=[",".join(map(str, d.sparsities))], help="fractions of units to remove, in [0, 1)")
    add("--seeds", nargs="+", default=[",".join(map(str, d.seeds))], help="integer seeds")
    add("--out", type=Path, default=d.out, help="output folder (leaderboard.csv)")
    add("--data-dir", type=Path, default=None, help="local task data, e.g. ../shared/data")
    add("-o", "--option", action="append", default=[], metavar="PLUGIN.KEY=VALUE", help="plugin option")
    add("--train-steps", type=int, default=None, help="fine-tuning steps per (model, task, seed); default: the task's")
    add("--batch-size", type=int, default=d.batch_size)
    add("--lr", type=float, default=d.learning_rate, help="learning rate of the adapter")
    add("--calib-examples", type=int, default=d.calib_examples, help="training examples the scorers see")
    add("--latency-batch", type=int, default=d.latency_batch)
    add("--latency-tokens", type=int, default=d.latency_tokens)
    add("--eval-limit", type=int, default=None, help="evaluate on the first N validation examples only")
    add("--tensorboard", type=Path, default=None, metavar="DIR", help="write per-run TensorBoard scalars here")
    add("--targets", default=d.targets, help="weight groups weight pruners act on: linear, attention, ffn, "
        "qkv or any of q,k,v,o,ffn_in,ffn_out (default: linear; embeddings and classifier are never pruned)")
    add("--no-baselines", action="store_true", help="do not add random (and magnitude) baselines to the grid")
    add("--cache", type=Path, default=None, metavar="DIR",
        help="cache of fine-tuned models and scores (default: $HARNESS_CACHE or ~/.cache/prune-harness)")
    add("--no-cache", action="store_true", help="neither read nor write the cache")
    add("--executor", choices=("local", "ray"), default=d.executor, help="run units here or as Ray tasks")
    add("--address", default=None, help="address of an existing Ray cluster (default: start a local one)")
    add("--cpus-per-task", type=float, default=d.cpus_per_task, help="Ray CPUs reserved per unit")
    add("--retries", type=int, default=d.retries, help="Ray retries of a unit whose worker died")
    add("--recover", default=None, metavar="ADAPTER",
        help="train every pruned model again with this adapter (e.g. finetune, lora); rows before and after")
    add("--recover-steps", type=int, default=d.recover_steps, help="training steps of the recovery")
    add("--isolation", choices=("process", "none"), default=d.isolation,
        help="'process' (default): run each unit in a child process, so a plugin that crashes, exits or hangs "
        "costs only its cells; 'none': in this process (plugins registered from Python that cannot be pickled)")
    add("--cell-timeout", type=float, default=d.cell_timeout, metavar="SECONDS",
        help=f"longest a fine-tune, scoring pass or cell may run before it is stopped and its cells fail "
        f"(default {d.cell_timeout:g}; 0: no limit; needs --isolation process)")
    add("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Score, prune and adapt transformers; benchmark them honestly.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _bench_arguments(commands.add_parser("bench", help="run a benchmark grid and write a leaderboard"))
    commands.add_parser("list", help="list installed plugins: role, name, distribution")
    report = commands.add_parser("report", help="Markdown + HTML leaderboard and PNG plots from a bench output folder")
    report.add_argument("out", type=Path, help="the --out folder of a bench run")
    report.add_argument("--to", type=Path, default=None, help="where to write (default: OUT/report)")
    return parser


def _config(args: argparse.Namespace) -> object:
    from harness.bench import BenchConfig

    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder")
    return BenchConfig(
        models=tuple(_items(args.models)),
        tasks=tuple(_items(args.tasks)),
        plugins=tuple(_items(args.plugins)),
        sparsities=_typed(args.sparsities, float, "sparsity"),
        seeds=_typed(args.seeds, int, "seed"),
        out=args.out,
        data_dir=args.data_dir,
        options=tuple(args.option),
        train_steps=args.train_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        calib_examples=args.calib_examples,
        latency_batch=args.latency_batch,
        latency_tokens=args.latency_tokens,
        eval_limit=args.eval_limit,
        tensorboard=args.tensorboard,
        targets=args.targets,
        baselines=not args.no_baselines,
        cache=args.cache,
        use_cache=not args.no_cache,
        executor=args.executor,
        address=args.address,
        cpus_per_task=args.cpus_per_task,
        retries=args.retries,
        recover=args.recover,
        recover_steps=args.recover_steps,
        isolation=args.isolation,
        cell_timeout=args.cell_timeout,
    )


def _check_output(out: Path) -> None:
    """Before any work: ``--out`` can be written and its leaderboard read (it is never overwritten if not)."""
    from harness import atomic, leaderboard

    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / ".write-test", "").unlink()
    except OSError as error:
        raise UsageError(f"--out {out} cannot be written ({error.strerror or error})") from None
    leaderboard.read(out / "leaderboard.csv")


def cmd_bench(args: argparse.Namespace, extra: Sequence[object] = ()) -> int:
    from harness import leaderboard, provenance
    from harness.bench import make_plan
    from harness.executor import execute
    from harness.plugins import load_registry, parse_options

    config = _config(args)
    registry = load_registry(extra)
    plan = make_plan(config, registry, parse_options(config.options, registry))
    _check_output(Path(config.out))
    provenance.record(Path(config.out), args.argv)
    print(f"harness: {plan.total_cells()} cells -> {Path(config.out) / 'leaderboard.csv'}", file=sys.stderr)
    rows = execute(plan, progress=not args.no_progress)
    stored = leaderboard.read(Path(config.out) / "leaderboard.csv")
    everything = leaderboard.current(stored)
    print(leaderboard.summary(everything))
    leaderboard.write_aggregate(everything, Path(config.out) / "leaderboard_seeds.csv")
    failed = rows[rows["status"] != "ok"]
    counts = rows.attrs.get("counts", {})
    print(f"{len(rows) - len(failed)} ok, {len(failed)} failed, {counts.get('cells_skipped', 0)} already done; "
          f"fine-tunes run {counts.get('fine_tunes_run', 0)} (cached {counts.get('models_hit', 0)}), "
          f"scoring passes run {counts.get('scoring_runs', 0)} (cached {counts.get('scores_hit', 0)})"
          + (f"; corrupt cache entries recomputed {counts['corrupt_entries']}" if counts.get("corrupt_entries") else ""))
    print(f"leaderboard: {Path(config.out) / 'leaderboard.csv'}; over seeds: {Path(config.out) / 'leaderboard_seeds.csv'}")
    if len(stored) > len(everything):
        print(f"{len(stored) - len(everything)} older rows of the same cells (other code or budget) stay in the "
              "leaderboard but are left out of the summary and the aggregate")
    flagged = leaderboard.flag_counts(everything)
    if flagged:
        print("flagged rows in the leaderboard (see the flags column): " + ", ".join(f"{flag} {n}" for flag, n in flagged.items()))
    for _, row in failed.iterrows():
        print(f"  failed: {row['scorer']}/{row['pruner']} sparsity {row['sparsity']} seed {row['seed']}: {row['error']}")
    return 1 if len(failed) else 0


def cmd_list(args: argparse.Namespace, extra: Sequence[object] = ()) -> int:
    """One line per record; a name two distributions register shows as ``DIST:NAME``, what selects it."""
    from harness.plugins import load_registry

    registry = load_registry(extra)
    rows = [(item, registry.label(item)) for item in registry]
    width = max((len(label) for _, label in rows), default=4)
    print(f"{'role':8} {'name':{width}} {'unit':7} distribution")
    for item, label in rows:
        unit = getattr(item.record, "granularity", "-")
        print(f"{item.role:8} {label:{width}} {unit:7} {item.dist}")
    return 0


def cmd_report(args: argparse.Namespace, extra: Sequence[object] = ()) -> int:
    from harness import report

    folder = report.build(args.out, args.to)
    print(f"report: {folder / 'report.md'}, {folder / 'report.html'} and {len(list(folder.glob('*.png')))} plots")
    return 0


def main(argv: Sequence[str] | None = None, extra: Sequence[object] = ()) -> int:
    """Entry point; ``extra`` registers plugin objects directly (tests)."""
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded beside the leaderboard
        command = {"bench": cmd_bench, "list": cmd_list, "report": cmd_report}[args.command]
        return command(args, extra)
    except UsageError as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full or a folder made read-only mid-run: rows written so far stay
        where = f" {error.filename}" if error.filename else ""
        print(f"harness: error: cannot write{where}: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; finished rows are in the leaderboard", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
