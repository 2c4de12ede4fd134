"""A bench run's configuration in four frozen groups, and the keys hashed mechanically from them.

``Grid`` is what is crossed, ``Budget`` what determines each result, ``Measure``
how results are measured and ``Execution`` how the run is carried out (never
part of a result). Run ids and cache keys hash whole groups (field names and
values), so a field added to ``Budget`` changes them without anyone editing key
code. Each budget field says which step it first affects (``stage`` metadata):
a fine-tune's key hashes the ``train`` fields, a scoring pass's adds ``score``,
a row's adds ``cell`` (and ``recovery`` for recovered rows). A field without a
stage affects every step. The same configuration loads from a TOML file whose
tables are the groups (``harness bench --config grid.toml``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.errors import UsageError

DEFAULT_PLUGINS = ("head-gradient", "l0-gates", "heads", "taylor-neuron", "neurons", "magnitude", "global-unstructured")
STAGES = ("train", "score", "cell", "recovery")


def _stage(name: str) -> dict[str, str]:
    return {"stage": name}


@dataclass(frozen=True)
class Grid:
    """What is crossed: models × tasks × adapters × (scorer, pruner) × sparsities × seeds."""

    models: tuple[str, ...] = ("minilm",)
    tasks: tuple[str, ...] = ("synthetic",)
    plugins: tuple[str, ...] = DEFAULT_PLUGINS  # ("all",): every installed plugin
    sparsities: tuple[float, ...] = (0.25, 0.5, 0.75)
    seeds: tuple[int, ...] = (0,)
    options: tuple[str, ...] = ()  # PLUGIN.KEY=VALUE
    targets: str = "linear"  # weight groups the granularities that use targets prune
    baselines: bool = True  # add each benchmarked granularity's baseline scorers
    recover: str | None = None  # an adapter that trains every pruned model again (rows with and without)
    schedules: tuple[str, ...] = ("one-shot",)  # or "iterative:STEPS": re-scored between steps (harness.schedules)
    # plugins ("all",) crosses the methods with the default adapter only, the other adapters get their dense row
    # (5 adapters x every method is 470 cells on the default task); True crosses them with every adapter
    cross_adapters: bool = False


@dataclass(frozen=True)
class Budget:
    """What determines a result besides the grid's coordinates: part of every key it can change."""

    train_steps: int | None = field(default=None, metadata=_stage("train"))  # None: the task's default, else 300
    batch_size: int = field(default=32, metadata=_stage("train"))
    learning_rate: float = field(default=1e-4, metadata=_stage("train"))
    calib_examples: int = field(default=512, metadata=_stage("score"))
    eval_limit: int | None = field(default=None, metadata=_stage("cell"))
    recover_steps: int = field(default=200, metadata=_stage("recovery"))
    # where every stage runs and in which precision (harness.devices); planning resolves "auto" to the device and
    # dtype used, so a key names what computed it. dtype auto: bfloat16 where the device computes it natively (MiniLM
    # on SST-2, 3 seeds, on this 2-core CPU: fine-tune 2.7x and prefill 3.1x faster, accuracy within one example)
    device: str = field(default="auto", metadata=_stage("train"))
    dtype: str = field(default="auto", metadata=_stage("train"))

    def stages(self, *stages: str) -> dict[str, Any]:
        """The fields that affect any of ``stages`` (and every field without a stage), by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("stage", None) in (*stages, None)}


@dataclass(frozen=True)
class Measure:
    """How a row is measured: part of every row's run id."""

    latency_batch: int = 32
    latency_tokens: int = 128
    decode_tokens: int = 16  # causal LMs: tokens generated per timed decode pass after a latency_tokens prompt; 0: off
    sparse_kernels: bool = False  # time 2:4 weights on torch's semi-structured sparse kernels (CUDA, float16/bfloat16)


@dataclass(frozen=True)
class Execution:
    """How the run is carried out: where, cached or not, in which processes. Never part of a key."""

    out: Path = Path("runs/latest")
    data_dir: Path | None = None  # local task data (its content is fingerprinted into every key)
    tensorboard: Path | None = None
    cache: Path | None = None  # None: harness.cache.default_root()
    use_cache: bool = True
    executor: str = "local"  # or "ray"
    address: str | None = None  # an existing Ray cluster; None starts a local one
    cpus_per_task: float = 1.0
    retries: int = 2  # Ray retries of a unit whose worker died
    isolation: str = "process"  # "process": each unit in a child process; "none": in this one
    cell_timeout: float = 3600.0  # seconds one step may take; 0: no limit
    progress: bool = True


GROUPS = {"grid": Grid, "budget": Budget, "measure": Measure, "execution": Execution}


@dataclass(frozen=True)
class BenchConfig:
    """The four groups of a bench run."""

    grid: Grid = Grid()
    budget: Budget = Budget()
    measure: Measure = Measure()
    execution: Execution = Execution()

    def replace(self, **settings: Any) -> BenchConfig:
        """A copy with fields changed by their (unique) names, whatever group holds them (see :func:`apply`)."""
        return apply(self, settings)


def group_of(name: str) -> str:
    """Which group holds field ``name``; an unknown name is a one-line error naming the closest one."""
    for group, cls in GROUPS.items():
        if name in {f.name for f in dataclasses.fields(cls)}:
            return group
    known = [f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, known, n=1)
    raise UsageError(f"unknown setting {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))


def _kinds(cls: type, name: str) -> tuple[str, bool, bool]:
    """A field's value type (``int``, ``float``, ``str``, ``bool`` or ``Path``), whether it is a tuple of them
    and whether it may be ``None``, read from its annotation."""
    annotation = str(next(f.type for f in dataclasses.fields(cls) if f.name == name))
    optional = annotation.endswith("| None")
    annotation = annotation.removesuffix("| None").strip()
    if annotation.startswith("tuple["):
        return annotation[len("tuple["):].split(",")[0].strip(" ]"), True, optional
    return annotation, False, optional


def _one(kind: str, value: Any) -> Any:
    """``value`` as ``kind``, or ``ValueError`` (bools are not numbers; ints are floats)."""
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "Path" and isinstance(value, (str, Path)):
        return Path(value)
    raise ValueError(kind)


def _coerce(cls: type, name: str, value: Any, where: str) -> Any:
    """A setting to its field's type (lists become tuples, strings paths); a wrong kind is a one-line error."""
    kind, many, optional = _kinds(cls, name)
    if value is None and optional:
        return None
    try:
        if many:
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(_one(kind, item) for item in items)
        return _one(kind, value)
    except ValueError:
        article = "an" if kind == "int" else "a"
        wanted = f"a list of {kind} values" if many else f"{article} {kind}" + (" or nothing" if optional else "")
        raise UsageError(f"{where}: {name} takes {wanted}, not {value!r}") from None


def apply(config: BenchConfig, settings: Mapping[str, Any], where: str = "setting") -> BenchConfig:
    """``config`` with fields changed by their (unique) names, whatever group holds them, values checked."""
    changes: dict[str, dict[str, Any]] = {}
    for name, value in settings.items():
        group = group_of(name)
        changes.setdefault(group, {})[name] = _coerce(GROUPS[group], name, value, where)
    groups = {g: dataclasses.replace(getattr(config, g), **c) for g, c in changes.items()}
    return dataclasses.replace(config, **groups)


def from_mapping(tables: Mapping[str, Any], where: str = "config") -> BenchConfig:
    """A config from ``{group: {field: value}}`` (a parsed TOML file); relative paths stay relative."""
    settings: dict[str, Any] = {}
    for group, values in tables.items():
        if group not in GROUPS:
            close = difflib.get_close_matches(group, list(GROUPS), n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else f" (tables: {', '.join(GROUPS)})"
            raise UsageError(f"{where}: unknown table [{group}]{hint}")
        if not isinstance(values, Mapping):
            raise UsageError(f"{where}: [{group}] must be a table of settings")
        for name, value in values.items():
            if group_of(name) != group:
                raise UsageError(f"{where}: {name} belongs in [{group_of(name)}], not [{group}]")
            settings[name] = value
    return apply(BenchConfig(), settings, where)


def load(path: Path) -> BenchConfig:
    """Read a grid file; a missing file or a TOML syntax error is a one-line error with the line."""
    import tomllib

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UsageError(f"--config {path}: {error.strerror or error}") from None
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"--config {path}: {error}") from None
    return from_mapping(tables, f"--config {path}")


def to_toml(config: BenchConfig, groups: tuple[str, ...] = tuple(GROUPS), full: tuple[str, ...] = ()) -> str:
    """The settings of ``groups`` that differ from the defaults (every setting of the ``full`` groups, so a
    published grid does not change when a default does), as a grid file ``load`` reads back."""
    lines: list[str] = []
    for group in groups:
        values, defaults = getattr(config, group), GROUPS[group]()
        names = [f.name for f in dataclasses.fields(values) if getattr(values, f.name) is not None and
                 (group in full or getattr(values, f.name) != getattr(defaults, f.name))]
        if names:
            lines.append(f"[{group}]")
            lines.extend(f"{name} = {_toml_value(getattr(values, name))}" for name in names)
            lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return json.dumps(str(value))
    return json.dumps(value)
