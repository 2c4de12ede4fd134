"""The scheduler: crosses models × tasks × adapters × (scorer, pruner) × sparsities × seeds.

Each (model, task, adapter, seed) is fine-tuned once and each importance is
computed once, then reused across sparsity levels. Every cell's row is written
to the leaderboard as soon as it exists; a failing plugin costs only its cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness import data as taskdata
from harness import surgery, tracking
from harness.errors import UsageError
from harness.models import ModelSource, resolve_all
from harness.plugins import Registry, options_for
from harness.records import (
    Adapter,
    Pruner,
    Scorer,
    Task,
    TaskData,
    TaskRequest,
)

SUPPORTED_GRANULARITIES = ("head", "weight", "neuron")
DEFAULT_TASK = "synthetic"
DEFAULT_MODEL = "minilm"
DEFAULT_ADAPTER = "finetune"
# One method of each granularity against its random baseline (added automatically): a grid that runs in minutes.
DEFAULT_PLUGINS = ("head-gradient", "l0-gates", "heads", "taylor-neuron", "neurons", "magnitude", "global-unstructured")


@dataclass(frozen=True)
class BenchConfig:
    """Everything a bench run takes from the command line."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    tasks: tuple[str, ...] = (DEFAULT_TASK,)
    plugins: tuple[str, ...] = DEFAULT_PLUGINS  # ("all",): every installed plugin
    sparsities: tuple[float, ...] = (0.25, 0.5, 0.75)
    seeds: tuple[int, ...] = (0,)
    out: Path = Path("runs/latest")
    data_dir: Path | None = None
    options: tuple[str, ...] = ()
    train_steps: int | None = None  # None: the task's own default budget, else 300
    batch_size: int = 32
    learning_rate: float = 1e-4
    calib_examples: int = 512
    latency_batch: int = 32
    latency_tokens: int = 128
    eval_limit: int | None = None
    tensorboard: Path | None = None
    targets: str = "linear"  # weight groups that weight-granularity methods prune
    baselines: bool = True  # add the random baseline of each granularity (and magnitude for weights)
    cache: Path | None = None  # None: harness.cache.default_root()
    use_cache: bool = True
    executor: str = "local"  # or "ray"
    address: str | None = None  # an existing Ray cluster; None starts a local one
    cpus_per_task: float = 1.0
    retries: int = 2  # Ray retries of a unit whose worker died
    recover: str | None = None  # an adapter that trains every pruned model again (rows with and without)
    recover_steps: int = 200
    isolation: str = "process"  # "process": each unit in a child process (crashes and hangs cost cells); "none"
    cell_timeout: float = 3600.0  # seconds one step (fine-tune, scoring pass, cell) may take; 0: no limit


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
    code: dict[str, str] = field(default_factory=dict)  # record -> code identity, see code_of

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
        for record in [*(t for t, _ in self.tasks), *self.adapters, self.recovery, *(r for m in self.methods for r in m)]:
            self.code_of(record)

    def recoveries(self) -> tuple[bool, ...]:
        """Each pruned cell without recovery, and with it when ``--recover`` names an adapter."""
        return (False, True) if self.recovery is not None else (False,)

    def cells_per_unit(self) -> int:
        return 1 + len(self.methods) * len(self.sparsities) * len(self.recoveries())

    def total_cells(self) -> int:
        units = len(self.models) * len(self.tasks) * len(self.adapters) * len(self.config.seeds)
        return units * self.cells_per_unit()


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


def _pair(chosen: dict[str, list[Any]]) -> list[tuple[Scorer | None, Pruner]]:
    """Each scorer with every selected pruner of its granularity; score-free pruners once.

    A named scorer without a pruner of its granularity is an error; one selected
    only because no scorer was named is skipped. A score-free (random) pruner
    runs when named, or when a scorer of its granularity runs.
    """
    scorers, pruners, named = chosen["scorer"], chosen["pruner"], chosen["named"]
    methods: list[tuple[Scorer | None, Pruner]] = []
    for scorer in scorers:
        if scorer.granularity not in SUPPORTED_GRANULARITIES:
            raise UsageError(f"scorer {scorer.name!r}: granularity {scorer.granularity!r} is not supported")
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
    for name in config.tasks:
        path = Path(name)
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            task = taskdata.load_task_file(path)
        else:
            task = registry.get("task", name)
        request = TaskRequest(config.data_dir, config.seeds[0], options_for(task, overrides))
        try:
            loaded.append((task, task.load(request)))
        except ValueError as error:  # data a task cannot be built from: the user's input, not a bug
            raise UsageError(f"task {task.name}: {error}") from None
    return loaded


def _check_head_budgets(
    config: BenchConfig, models: list[ModelSource], methods: list, sparsities: list[float], overrides: dict
) -> None:
    """Dry-run each head pruner on every model's head geometry, so an impossible (GQA) budget fails up front.

    ``compute_mask`` is cheap and touches no weights; a ``UsageError`` it raises
    (a budget the key/value groups cannot meet) stops the run before training.
    Other failures belong to the cells and are reported there.
    """
    pruners = {pruner.name: pruner for _, pruner in methods if pruner.granularity == "head"}
    if not pruners or not sparsities:
        return
    import torch
    from transformers import AutoConfig

    from harness.records import PruneRequest

    for source in models:
        try:
            geometry = surgery.config_geometry(AutoConfig.from_pretrained(source.location))
        except Exception:  # no head surgery for this architecture, or no config: the cells will say so
            continue
        scores = torch.zeros(geometry.num_layers, max(geometry.heads_per_layer))
        for pruner in pruners.values():
            for sparsity in sparsities:
                request = PruneRequest(scores, sparsity, options_for(pruner, overrides), config.seeds[0],
                                       geometry.kv_heads_per_layer)
                try:
                    pruner.compute_mask(request)
                except UsageError as error:
                    raise UsageError(f"{source.name}: {error}") from None
                except Exception:
                    pass


def _check_model_kinds(models: list[ModelSource], tasks: list[tuple[Task, TaskData]]) -> None:
    """A causal-LM task needs decoders: say so before any work instead of scoring an encoder's LM head."""
    lm_tasks = [task.name for task, data in tasks if data.kind == "causal-lm"]
    if not lm_tasks:
        return
    from transformers import AutoConfig

    from harness.models import is_causal_lm

    for source in models:
        try:
            config = AutoConfig.from_pretrained(source.location)
        except Exception:  # the cells will report what is wrong with it
            continue
        if not is_causal_lm(config):
            raise UsageError(f"task {lm_tasks[0]} is language modelling (perplexity), but model {source.name} "
                             f"({config.model_type}) is not a causal LM; give a decoder such as GPT-2 or LLaMA")


def _check_grid(config: BenchConfig) -> None:
    """Seeds and sparsities: at least one seed, none given twice (a repeat would only duplicate rows)."""
    if not config.seeds:
        raise UsageError("give at least one seed")
    for what, values in (("seed", config.seeds), ("sparsity", config.sparsities)):
        repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if repeated is not None:
            raise UsageError(f"{what} {repeated:g} is given twice")
    for seed in config.seeds:
        if seed < 0:
            raise UsageError(f"seed {seed} is negative (numpy's seeded generators take seeds >= 0)")
    for s in config.sparsities:
        if not 0.0 <= s < 1.0:
            raise UsageError(f"sparsity {s} is outside [0, 1)")


def _check_numbers(config: BenchConfig) -> None:
    """Every numeric flag in its range before anything loads: out of range, it would fail (or mislead) mid-grid."""
    at_least = {
        "--train-steps": (config.train_steps, 0), "--batch-size": (config.batch_size, 1),
        "--calib-examples": (config.calib_examples, 1), "--latency-batch": (config.latency_batch, 1),
        "--latency-tokens": (config.latency_tokens, 1), "--eval-limit": (config.eval_limit, 1),
        "--retries": (config.retries, 0), "--recover-steps": (config.recover_steps, 1),
        "--cell-timeout": (config.cell_timeout, 0),
    }
    for flag, (value, low) in at_least.items():
        if value is not None and not value >= low:  # `not >=` also refuses NaN
            raise UsageError(f"{flag} must be >= {low}, not {value:g}")
    for flag, number in (("--lr", config.learning_rate), ("--cpus-per-task", config.cpus_per_task)):
        if not (math.isfinite(number) and number > 0):
            raise UsageError(f"{flag} must be a finite number > 0, not {number:g}")


def _check_batch_size(config: BenchConfig, tasks: list[tuple[Task, TaskData]]) -> None:
    """A training batch larger than a classification task's training split would repeat examples within it.

    (A causal-LM task's split is cut into token blocks only once a tokenizer is loaded: not checked here.)
    """
    for task, data in tasks:
        if data.kind == "classification" and config.batch_size > len(data.train):
            raise UsageError(f"--batch-size {config.batch_size} is larger than the training split of task "
                             f"{task.name} ({len(data.train)} examples)")


def make_plan(config: BenchConfig, registry: Registry, overrides: dict[str, dict[str, Any]]) -> Plan:
    """Validate the whole grid up front (numbers, plugins, models, task data) so bad input costs nothing."""
    _check_grid(config)
    _check_numbers(config)
    if config.tensorboard is not None:
        tracking.check_available()
    try:
        surgery.parse_groups(config.targets)
    except ValueError as error:
        raise UsageError(f"--targets: {error}") from None
    chosen = _select(registry, config.plugins)
    methods = _pair(chosen)
    if config.baselines:
        methods = _with_baselines(methods, registry)
    tasks = _load_tasks(config, registry, overrides)
    _check_batch_size(config, tasks)
    models = resolve_all(config.models)
    _check_model_kinds(models, tasks)
    sparsities = sorted({s for s in config.sparsities if s > 0})
    _check_head_budgets(config, models, methods, sparsities, overrides)
    recovery = registry.get("adapter", config.recover) if config.recover else None
    return Plan(config, models, tasks, chosen["adapter"], methods, sparsities, overrides, recovery)
