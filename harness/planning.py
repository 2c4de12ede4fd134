"""Planning a grid: which models, tasks, adapters, (scorer, pruner) pairs and sparsities, validated up front.

Everything a user could have got wrong (numbers, plugin names, options, task
data, model kinds, budgets a pruner cannot meet) fails here, before any model
is trained; :mod:`harness.cells` then runs the plan unit by unit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness import data as taskdata
from harness import schedules, surgery, tensorboard
from harness.config import BenchConfig, Budget, Grid
from harness.errors import UsageError
from harness.models import ModelSource, load_config, resolve_all
from harness.plugins import Registry, options_for
from harness.records import (
    Adapter,
    Granularity,
    Pruner,
    Scorer,
    Task,
    TaskData,
    TaskRequest,
)

DEFAULT_ADAPTER = "finetune"


@dataclass
class Plan:
    """A validated grid: nothing in it can fail for a reason the user could have fixed up front."""

    config: BenchConfig
    models: list[ModelSource]
    tasks: list[tuple[Task, TaskData]]
    adapters: list[Adapter]
    methods: list[tuple[Scorer | None, Pruner]]  # scorer None: a pruner that uses no scores
    sparsities: list[float]
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    recovery: Adapter | None = None
    granularities: dict[str, Granularity] = field(default_factory=dict)  # every one the methods use, by name
    dense_only: frozenset[str] = frozenset()  # adapters whose units run the dense cell only (see _dense_only)
    code: dict[str, str] = field(default_factory=dict)  # record -> code identity, see code_of

    def granularity(self, record: Scorer | Pruner | None) -> Granularity | None:
        """The granularity a scorer or pruner works on (``None`` for the dense cell)."""
        return self.granularities[record.granularity] if record is not None else None

    def code_of(self, record: Any) -> str:
        """The code identity of a plugin record (:func:`harness.identity.of`), computed once per plan.

        Kept in the plan so a child process, which gets the records without their
        task loaders, computes the same run ids as the parent.
        """
        from harness import identity

        if record is None:
            return ""
        key = f"{type(record).__name__}:{record.name}"
        if key not in self.code:
            self.code[key] = identity.of(record)
        return self.code[key]

    def all_code(self) -> None:
        """Every record's code identity, computed now (before the plan is shipped)."""
        records = [*(t for t, _ in self.tasks), *self.adapters, self.recovery, *(r for m in self.methods for r in m),
                   *self.granularities.values()]
        for record in records:
            self.code_of(record)

    def recoveries(self) -> tuple[bool, ...]:
        """Each pruned cell without recovery, and with it when ``--recover`` names an adapter."""
        return (False, True) if self.recovery is not None else (False,)

    def schedules(self, scorer: Scorer | None, pruner: Pruner) -> tuple[str, ...]:
        """The grid's schedules for a method that can prune in steps, else one shot only."""
        return schedules.for_method(self.config.grid.schedules, scorer, pruner, self.granularity(pruner))

    def crosses(self, adapter: Adapter) -> bool:
        """Whether the units of ``adapter`` run every method, or the dense cell only."""
        return adapter.name not in self.dense_only

    def cells_per_unit(self, adapter: Adapter | None = None) -> int:
        """Cells of a unit of ``adapter`` (default: one that runs every method)."""
        if adapter is not None and not self.crosses(adapter):
            return 1
        pruned = sum(len(self.schedules(scorer, pruner)) for scorer, pruner in self.methods)
        return 1 + pruned * len(self.sparsities) * len(self.recoveries())

    def total_cells(self) -> int:
        units = len(self.models) * len(self.tasks) * len(self.config.grid.seeds)
        return units * sum(self.cells_per_unit(adapter) for adapter in self.adapters)


def _select(registry: Registry, names: Sequence[str]) -> dict[str, list[Any]]:
    """``all`` or named scorers/pruners/adapters; a scorer or pruner role nobody named gets all of its plugins.

    Adapters are the expensive role (one training run each per unit): unless
    some are named or ``all`` is given, only the full fine-tuning ``finetune``
    runs. The key ``named`` lists the roles the user named plugins of.
    """
    roles = ("scorer", "pruner", "adapter")
    chosen: dict[str, list[Any]] = {role: [] for role in roles}
    if list(names) not in (["all"], []):
        for name in names:
            matches = [role for role in roles if registry.has(role, name)]
            if not matches:
                hint = " (it is a task: use --tasks)" if registry.has("task", name) else ""
                known = ", ".join(sorted({n for r in roles for n in registry.names(r)}))
                raise UsageError(f"unknown plugin {name!r}{hint} (known: {known})")
            chosen[matches[0]].append(registry.get(matches[0], name))
    chosen["named"] = [role for role in roles if chosen[role]]
    if not chosen["adapter"] and list(names) != ["all"] and registry.has("adapter", DEFAULT_ADAPTER):
        chosen["adapter"] = [registry.get("adapter", DEFAULT_ADAPTER)]
    for role in roles:
        if not chosen[role]:
            chosen[role] = [registry.get(role, n) for n in registry.names(role)]
        if not chosen[role]:
            raise UsageError(f"no {role} plugin is installed")
    return chosen


def _dense_only(grid: Grid, adapters: list[Adapter]) -> frozenset[str]:
    """With ``--plugins all``, the adapters other than the default one get a dense cell each, not every method.

    Every method under each of the 5 built-in adapters is 470 cells on the
    default task (55 min measured on one thread here in bfloat16); the dense
    rows still compare the adapters' fine-tunes. ``--cross-adapters`` crosses
    every adapter with every method; named adapters are always crossed.
    """
    names = [adapter.name for adapter in adapters]
    if grid.cross_adapters and list(grid.plugins) != ["all"]:
        raise UsageError("--cross-adapters changes what --plugins all crosses; adapters named in --plugins are "
                         "always crossed with every method")
    if list(grid.plugins) != ["all"] or grid.cross_adapters or DEFAULT_ADAPTER not in names:
        return frozenset()
    return frozenset(name for name in names if name != DEFAULT_ADAPTER)


def _pair(chosen: dict[str, list[Any]], known: Registry) -> list[tuple[Scorer | None, Pruner]]:
    """Each scorer with every selected pruner of its granularity; score-free pruners once.

    A named scorer without a pruner of its granularity is an error; one selected
    only because no scorer was named is skipped. A score-free (random) pruner
    runs when named, or when a scorer of its granularity runs.
    """
    scorers, pruners, named = chosen["scorer"], chosen["pruner"], chosen["named"]
    methods: list[tuple[Scorer | None, Pruner]] = []
    for record in [*scorers, *pruners]:
        if not known.has("granularity", record.granularity):
            kinds = ", ".join(known.names("granularity"))
            raise UsageError(f"{type(record).__name__.lower()} {record.name!r}: granularity {record.granularity!r} "
                             f"is not installed (known: {kinds})")
    for scorer in scorers:
        matching = [p for p in pruners if p.granularity == scorer.granularity and p.uses_scores]
        if not matching and "scorer" in named:
            raise UsageError(f"scorer {scorer.name!r} ({scorer.granularity}) has no pruner of its granularity selected")
        methods.extend((scorer, pruner) for pruner in matching)
    granularities = {scorer.granularity for scorer, _ in methods}
    for pruner in pruners:
        if not pruner.uses_scores and ("pruner" in named or pruner.granularity in granularities):
            methods.append((None, pruner))
    if not methods:
        raise UsageError("no scorer and pruner of the same granularity are selected")
    return methods


def _with_baselines(methods: list[tuple[Scorer | None, Pruner]], registry: Registry) -> list[tuple[Scorer | None, Pruner]]:
    """Add every baseline scorer (``Scorer.baseline``) of a benchmarked granularity, with that granularity's pruners."""
    present = {scorer.name for scorer, _ in methods if scorer is not None}
    added = list(methods)
    for name in registry.names("scorer"):
        baseline = registry.get("scorer", name)
        if not baseline.baseline or name in present:
            continue
        pruners = []
        for scorer, pruner in methods:
            if scorer is not None and scorer.granularity == baseline.granularity and pruner not in pruners:
                pruners.append(pruner)
        added.extend((baseline, pruner) for pruner in pruners)
    return added


def _load_tasks(config: BenchConfig, registry: Registry, overrides: dict) -> list[tuple[Task, TaskData]]:
    loaded = []
    for name in config.grid.tasks:
        path = Path(name)
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            task = taskdata.load_task_file(path)
        else:
            task = registry.get("task", name)
        request = TaskRequest(config.execution.data_dir, config.grid.seeds[0], options_for(task, overrides),
                              config.budget.batch_size)
        try:
            loaded.append((task, task.load(request)))
        except ValueError as error:  # data a task cannot be built from: the user's input, not a bug
            raise UsageError(f"task {task.name}: {error}") from None
    return loaded


def _model_configs(models: list[ModelSource]) -> dict[str, Any]:
    """Each model's config, read once for every check (``None`` when it cannot be read: the cells will say why)."""
    configs = {}
    for source in models:
        try:
            configs[source.name] = load_config(source)
        except Exception:
            configs[source.name] = None
    return configs


def _check_budgets(config: BenchConfig, plan: Plan, configs: dict[str, Any]) -> None:
    """Dry-run every pruner on each model's score shapes (from its config alone) at every sparsity.

    ``compute_mask`` is cheap and touches no weights; a ``UsageError`` it raises
    (e.g. a head budget grouped key/value heads cannot meet) stops the run before
    training. Other failures belong to the cells and are reported there.
    """
    pruners = {pruner.name: pruner for _, pruner in plan.methods}
    if not pruners or not plan.sparsities:
        return
    import torch

    from harness.records import PruneRequest

    for source in plan.models:
        model_config = configs[source.name]
        try:
            kv_heads = surgery.config_geometry(model_config).kv_heads_per_layer
        except Exception:  # no config, or no head layout for this architecture: the cells will say so
            continue
        for pruner in pruners.values():
            shapes = _config_shapes(plan.granularity(pruner), model_config)
            if shapes is None:
                continue
            for sparsity in plan.sparsities:
                request = PruneRequest(torch.zeros(shapes), sparsity, options_for(pruner, plan.overrides),
                                       config.grid.seeds[0], kv_heads)
                try:
                    pruner.compute_mask(request)
                except UsageError as error:
                    raise UsageError(f"{source.name}: {error}") from None
                except Exception:
                    pass


def _config_shapes(granularity: Granularity | None, model_config: Any) -> Any:
    """A granularity's score shape from a model config, or ``None`` when it cannot tell (or fails)."""
    if granularity is None or granularity.config_shapes is None:
        return None
    try:
        return granularity.config_shapes(model_config)
    except Exception:
        return None


def _check_model_kinds(models: list[ModelSource], tasks: list[tuple[Task, TaskData]], configs: dict[str, Any]) -> None:
    """A causal-LM task needs decoders: say so before any work instead of scoring an encoder's LM head."""
    lm_tasks = [task.name for task, data in tasks if data.kind == "causal-lm"]
    if not lm_tasks:
        return
    from harness.models import is_causal_lm

    for source in models:
        config = configs[source.name]
        if config is not None and not is_causal_lm(config):
            raise UsageError(f"task {lm_tasks[0]} evaluates a causal language model, but model {source.name} "
                             f"({config.model_type}) is not a causal LM; give a decoder such as GPT-2 or LLaMA")


def _check_grid(grid: Grid) -> None:
    """Seeds and sparsities: at least one seed, none given twice (a repeat would only duplicate rows)."""
    if not grid.seeds:
        raise UsageError("give at least one seed")
    for what, values in (("seed", grid.seeds), ("sparsity", grid.sparsities)):
        repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if repeated is not None:
            raise UsageError(f"{what} {repeated:g} is given twice")
    for seed in grid.seeds:
        if seed < 0:
            raise UsageError(f"seed {seed} is negative (numpy's seeded generators take seeds >= 0)")
    for s in grid.sparsities:
        if not 0.0 <= s < 1.0:
            raise UsageError(f"sparsity {s} is outside [0, 1)")
    schedules.check(grid.schedules)


def _check_numbers(config: BenchConfig) -> None:
    """Every numeric setting in its range before anything loads: out of range, it would fail (or mislead) mid-grid."""
    b, m, e = config.budget, config.measure, config.execution
    at_least = {
        "--train-steps": (b.train_steps, 0), "--batch-size": (b.batch_size, 1),
        "--calib-examples": (b.calib_examples, 1), "--latency-batch": (m.latency_batch, 1),
        "--latency-tokens": (m.latency_tokens, 1), "--decode-tokens": (m.decode_tokens, 0),
        "--eval-limit": (b.eval_limit, 1),
        "--retries": (e.retries, 0), "--recover-steps": (b.recover_steps, 1),
        "--cell-timeout": (e.cell_timeout, 0),
    }
    for flag, (value, low) in at_least.items():
        if value is not None and not value >= low:  # `not >=` also refuses NaN
            raise UsageError(f"{flag} must be >= {low}, not {value:g}")
    for flag, number in (("--lr", b.learning_rate), ("--cpus-per-task", e.cpus_per_task)):
        if not (math.isfinite(number) and number > 0):
            raise UsageError(f"{flag} must be a finite number > 0, not {number:g}")
    if e.data_dir is not None and not Path(e.data_dir).is_dir():
        raise UsageError(f"--data-dir {e.data_dir} is not a folder")
    if e.executor not in ("local", "ray"):
        raise UsageError(f"executor {e.executor!r} is not one of local, ray")
    if e.isolation not in ("process", "none"):
        raise UsageError(f"isolation {e.isolation!r} is not one of process, none")


def _check_batch_size(budget: Budget, tasks: list[tuple[Task, TaskData]]) -> None:
    """A training batch larger than a classification task's training split would repeat examples within it.

    (A causal-LM task's split is cut into token blocks only once a tokenizer is loaded: not checked here.)
    """
    for task, data in tasks:
        if data.kind == "classification" and budget.batch_size > len(data.train):
            raise UsageError(f"--batch-size {budget.batch_size} is larger than the training split of task "
                             f"{task.name} ({len(data.train)} examples)")


def _methods(grid: Grid, chosen: dict[str, list[Any]], registry: Registry) -> list[tuple[Scorer | None, Pruner]]:
    methods = _pair(chosen, registry)
    return _with_baselines(methods, registry) if grid.baselines else methods


def make_plan(config: BenchConfig, registry: Registry, overrides: dict[str, dict[str, Any]]) -> Plan:
    """Validate the whole grid up front (numbers, plugins, models, task data) so bad input costs nothing."""
    config = _placed(config)
    grid = config.grid
    _check_grid(grid)
    _check_numbers(config)
    if config.execution.tensorboard is not None:
        tensorboard.check_available()
    try:
        surgery.parse_groups(grid.targets)
    except ValueError as error:
        raise UsageError(f"--targets: {error}") from None
    chosen = _select(registry, grid.plugins)
    methods = _methods(grid, chosen, registry)
    tasks = _load_tasks(config, registry, overrides)
    _check_batch_size(config.budget, tasks)
    models = resolve_all(grid.models)
    configs = _model_configs(models)
    _check_model_kinds(models, tasks, configs)
    sparsities = sorted({s for s in grid.sparsities if s > 0})
    recovery = registry.get("adapter", grid.recover) if grid.recover else None
    used = {record.granularity for method in methods for record in method if record is not None}
    granularities = {name: registry.get("granularity", name) for name in sorted(used)}
    plan = Plan(config, models, tasks, chosen["adapter"], methods, sparsities, overrides, recovery, granularities,
                dense_only=_dense_only(grid, chosen["adapter"]))
    _check_budgets(config, plan, configs)
    _check_schedules(plan)
    return plan


def _placed(config: BenchConfig) -> BenchConfig:
    """``--device auto`` and ``--dtype auto`` resolved to what this machine runs (a missing device is a one-line
    error), so that keys and rows name the device and dtype that computed them."""
    from harness import devices

    budget = config.budget
    device = devices.resolve_device(budget.device)
    dtype = devices.resolve_dtype(budget.dtype, device)
    if config.measure.sparse_kernels:
        _check_sparse_kernels(device, dtype)
    return dataclasses.replace(config, budget=dataclasses.replace(budget, device=device, dtype=dtype))


def _check_sparse_kernels(device: str, dtype: str) -> None:
    """torch has semi-structured kernels on CUDA GPUs of compute capability 8.0 and up, in half precision:
    elsewhere the flag would time nothing."""
    import torch

    if not device.startswith("cuda") or dtype not in surgery.SPARSE_KERNEL_DTYPES:
        raise UsageError(f"--sparse-kernels: torch's semi-structured (2:4) kernels run on CUDA in "
                         f"{' or '.join(surgery.SPARSE_KERNEL_DTYPES)}; this run is on {device} in {dtype}")
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < (8, 0):
        raise UsageError(f"--sparse-kernels: torch's semi-structured (2:4) kernels need compute capability 8.0 or "
                         f"newer; {device} has {capability[0]}.{capability[1]}")


def _check_schedules(plan: Plan) -> None:
    """An iterative schedule that no method of the grid can run would silently give one-shot rows only."""
    stepped = [s for s in plan.config.grid.schedules if s != schedules.ONE_SHOT]
    if stepped and not any(schedules.iterates(scorer, pruner, plan.granularity(pruner))
                           for scorer, pruner in plan.methods):
        raise UsageError(f"schedule {stepped[0]}: no method of this grid can prune in steps (it needs a scorer, a "
                         "pruner that uses its scores and changes no weights, and a granularity that can gate units)")
