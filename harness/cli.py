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


# flag -> (setting, how its values are read); a flag not given leaves the setting to --config or the default
FLAGS: dict[str, tuple[str, str]] = {
    "plugins": ("plugins", "items"), "models": ("models", "items"), "tasks": ("tasks", "items"),
    "sparsities": ("sparsities", "floats"), "seeds": ("seeds", "ints"), "out": ("out", "value"),
    "data_dir": ("data_dir", "value"), "option": ("options", "value"), "train_steps": ("train_steps", "value"),
    "batch_size": ("batch_size", "value"), "lr": ("learning_rate", "value"),
    "calib_examples": ("calib_examples", "value"), "latency_batch": ("latency_batch", "value"),
    "latency_tokens": ("latency_tokens", "value"), "decode_tokens": ("decode_tokens", "value"), "eval_limit": ("eval_limit", "value"),
    "tensorboard": ("tensorboard", "value"), "targets": ("targets", "value"), "cache": ("cache", "value"),
    "executor": ("executor", "value"), "address": ("address", "value"), "cpus_per_task": ("cpus_per_task", "value"),
    "retries": ("retries", "value"), "recover": ("recover", "value"), "recover_steps": ("recover_steps", "value"),
    "isolation": ("isolation", "value"), "cell_timeout": ("cell_timeout", "value"),
    "schedule": ("schedules", "items"), "device": ("device", "value"), "dtype": ("dtype", "value"),
}


def _bench_arguments(bench: argparse.ArgumentParser) -> None:
    from harness.config import BenchConfig
    from harness.planning import DEFAULT_ADAPTER

    d = BenchConfig()  # one place for the defaults, shown in --help
    g, b, m, e = d.grid, d.budget, d.measure, d.execution
    add = bench.add_argument
    add("--config", type=Path, default=None, metavar="GRID.toml",
        help="settings from a grid file (tables [grid], [budget], [measure], [execution]); flags override it")
    add("--plugins", nargs="+", help="scorer/pruner/adapter names, or 'all' (every installed method under adapter "
        f"{DEFAULT_ADAPTER}, every other adapter on the dense model); default: {','.join(g.plugins)} with their "
        f"baselines, adapter {DEFAULT_ADAPTER}")
    add("--cross-adapters", action="store_true", default=None,
        help="with --plugins all: cross every method with every adapter, not only the default one")
    add("--models", nargs="+", help=f"'minilm', a local model folder or a hub id (default: {','.join(g.models)})")
    add("--tasks", nargs="+", help=f"task names (see 'harness list') or task files (.yaml/.json) (default: {','.join(g.tasks)})")
    add("--sparsities", nargs="+", help=f"fractions of units to remove, in [0, 1) (default: {','.join(map(str, g.sparsities))})")
    add("--seeds", nargs="+", help=f"integer seeds (default: {','.join(map(str, g.seeds))})")
    add("--out", type=Path, help=f"output folder (leaderboard.csv) (default: {e.out})")
    add("--data-dir", type=Path, help="local task data, e.g. ../shared/data (default: none, the hub)")
    add("-o", "--option", action="append", metavar="PLUGIN.KEY=VALUE", help="plugin option (see 'harness list --options')")
    add("--train-steps", type=int, help="fine-tuning steps per (model, task, seed) (default: the task's, else 300)")
    add("--batch-size", type=int, help=f"training and calibration batch size (default: {b.batch_size})")
    add("--lr", type=float, help=f"learning rate of the adapter (default: {b.learning_rate:g})")
    add("--calib-examples", type=int, help=f"training examples the scorers see (default: {b.calib_examples})")
    add("--latency-batch", type=int, help=f"batch size of the latency input (default: {m.latency_batch})")
    add("--latency-tokens", type=int, help=f"tokens per sequence of the latency input (default: {m.latency_tokens})")
    add("--decode-tokens", type=int, help="causal LMs: tokens generated per timed decode pass, batch 1 and 8, "
        f"after a --latency-tokens prompt; 0: no decode timing (default: {m.decode_tokens})")
    add("--sparse-kernels", action="store_true", default=None,
        help="time models whose linear weights are 2:4 on torch's semi-structured sparse kernels (needs --device "
        "cuda and --dtype float16 or bfloat16); without it their zeros are multiplied by the dense kernels")
    add("--device", help="where every stage runs: auto (cuda, else mps, else cpu), cpu, cuda, cuda:INDEX or mps "
        f"(default: {b.device}); recorded in each row and its run id")
    add("--dtype", help="auto (bfloat16 where the device computes it natively, else float32), float32, bfloat16 or "
        "float16: training and scoring run under autocast to it, evaluation and latency on the model cast to it "
        f"(default: {b.dtype})")
    add("--eval-limit", type=int, help="evaluate on the first N validation examples only (default: all)")
    add("--tensorboard", type=Path, metavar="DIR", help="write per-run TensorBoard scalars here (default: none)")
    add("--targets", help="weight groups weight pruners act on: linear, attention, ffn, qkv or any of "
        f"q,k,v,o,ffn_in,ffn_out (default: {g.targets}; embeddings and classifier are never pruned)")
    add("--no-baselines", action="store_true", default=None, help="do not add random (and magnitude) baselines")
    add("--cache", type=Path, metavar="DIR",
        help="cache of fine-tuned models and scores (default: $HARNESS_CACHE or ~/.cache/prune-harness)")
    add("--no-cache", action="store_true", default=None, help="neither read nor write the cache")
    add("--executor", choices=("local", "ray"), help=f"run units here or as Ray tasks (default: {e.executor})")
    add("--address", help="address of an existing Ray cluster (default: start a local one)")
    add("--cpus-per-task", type=float, help=f"Ray CPUs reserved per unit (default: {e.cpus_per_task:g})")
    add("--retries", type=int, help=f"Ray retries of a unit whose worker died (default: {e.retries})")
    add("--recover", metavar="ADAPTER",
        help="train every pruned model again with this adapter (e.g. finetune, lora); rows before and after")
    add("--schedule", nargs="+", metavar="SCHEDULE",
        help=f"'one-shot' or 'iterative:STEPS' (remove the target in STEPS equal steps, re-scoring between "
        f"them); several are crossed (default: {','.join(g.schedules)})")
    add("--recover-steps", type=int, help=f"training steps of the recovery (default: {b.recover_steps})")
    add("--isolation", choices=("process", "none"),
        help="'process' (default): run each unit in a child process, so a plugin that crashes, exits or hangs "
        "costs only its cells; 'none': in this process (plugins registered from Python that cannot be pickled)")
    add("--cell-timeout", type=float, metavar="SECONDS",
        help=f"longest a fine-tune, scoring pass or cell may run before it is stopped and its cells fail "
        f"(default {e.cell_timeout:g}; 0: no limit; needs --isolation process)")
    add("--no-progress", action="store_true", default=None, help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Score, prune and adapt transformers; benchmark them honestly.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _bench_arguments(commands.add_parser("bench", help="run a benchmark grid and write a leaderboard"))
    listing = commands.add_parser("list", help="list installed plugins: role, name, distribution")
    listing.add_argument("--options", action="store_true",
                         help="under each plugin, its options: name, type, default, choices or range, help")
    report = commands.add_parser(
        "report", help="Markdown + interactive HTML leaderboard and PNG plots from a bench output folder",
        description="Write report.md (PNG plots faceted by granularity), report.html (one self-contained page: "
        "sortable, filterable table and plots that name a point on hover; no server, no network) and the PNGs.",
        epilog="examples: harness report runs/sst2 (writes runs/sst2/report/); harness report "
        "leaderboards/minilm-sst2-all.csv (writes leaderboards/minilm-sst2-all/); harness report --index "
        "leaderboards (rebuilds every leaderboard's report there and writes leaderboards/index.html)")
    report.add_argument("out", type=Path, nargs="?", default=None,
                        help="the --out folder of a bench run, or a leaderboard CSV file")
    report.add_argument("--to", type=Path, default=None,
                        help="where to write (default: OUT/report, or NAME/ beside NAME.csv)")
    report.add_argument("--index", type=Path, default=None, metavar="FOLDER",
                        help="rebuild the report of every leaderboard CSV in FOLDER (into FOLDER/NAME/) and write "
                        "FOLDER/index.html linking them, one summary line each (model, task, methods, best method "
                        "at each sparsity)")
    return parser


def _settings(args: argparse.Namespace) -> dict[str, object]:
    """The settings the flags given on the command line change (by their config field names)."""
    settings: dict[str, object] = {}
    for flag, (name, how) in FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if how == "items":
            value = tuple(_items(value))
        elif how in ("floats", "ints"):
            value = _typed(value, float if how == "floats" else int, "sparsity" if how == "floats" else "seed")
        elif flag == "option":
            value = tuple(value)
        settings[name] = value
    for flag in ("cross_adapters", "sparse_kernels"):
        if getattr(args, flag):
            settings[flag] = True
    for flag, name in (("no_baselines", "baselines"), ("no_cache", "use_cache"), ("no_progress", "progress")):
        if getattr(args, flag):
            settings[name] = False
    return settings


def _config(args: argparse.Namespace) -> object:
    """The grid file (if any) with the flags given applied on top."""
    from harness.api import configure

    return configure(args.config, **_settings(args))


def cmd_bench(args: argparse.Namespace, extra: Sequence[object] = ()) -> int:
    from harness import leaderboard, provenance
    from harness.api import run

    result = run(_config(args), plugins_objects=extra, command=provenance.command_line(args.argv))
    out = result.out
    print(leaderboard.summary(result.leaderboard))
    print(result.summary())
    print(f"leaderboard: {out / 'leaderboard.csv'}; over seeds: {out / 'leaderboard_seeds.csv'}")
    if result.older_rows:
        print(f"{result.older_rows} older rows of the same cells (other code or budget) stay in the "
              "leaderboard but are left out of the summary and the aggregate")
    flagged = leaderboard.flag_counts(result.leaderboard)
    if flagged:
        print("flagged rows in the leaderboard (see the flags column): " + ", ".join(f"{flag} {n}" for flag, n in flagged.items()))
    for _, row in result.failed.iterrows():
        print(f"  failed: {row['scorer']}/{row['pruner']} sparsity {row['sparsity']} seed {row['seed']}: {row['error']}")
    return 0 if result.ok else 1


def cmd_list(args: argparse.Namespace, extra: Sequence[object] = ()) -> int:
    """One line per record; a name two distributions register shows as ``DIST:NAME``, what selects it.

    With ``--options``, each record's options follow it, indented, from the one
    description ``-o`` is checked against (typed or dict options alike).
    """
    from harness.options import describe, table
    from harness.plugins import load_registry

    registry = load_registry(extra)
    rows = [(item, registry.label(item)) for item in registry]
    width = max((len(label) for _, label in rows), default=4)
    roles = max((len(item.role) for item, _ in rows), default=4)
    units = max((len(getattr(item.record, "granularity", "-")) for item, _ in rows), default=4)
    print(f"{'role':{roles}} {'name':{width}} {'unit':{units}} distribution")
    if getattr(args, "options", False):
        print("    option  type  default  choices|range  help")
    for item, label in rows:
        unit = getattr(item.record, "granularity", "-")
        print(f"{item.role:{roles}} {label:{width}} {unit:{units}} {item.dist}")
        for line in table(describe(item.record)) if getattr(args, "options", False) else ():
            print(f"    {line}")
    return 0


def cmd_report(args: argparse.Namespace, extra: Sequence[object] = ()) -> int:
    from harness import report

    if args.index is not None:
        if args.out is not None or args.to is not None:
            raise UsageError("report --index FOLDER takes no OUT and no --to: it reports every CSV in FOLDER")
        page = report.build_index(args.index)
        print(f"index: {page}")
        return 0
    if args.out is None:
        raise UsageError("report needs OUT (a bench --out folder or a leaderboard CSV) or --index FOLDER")
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
