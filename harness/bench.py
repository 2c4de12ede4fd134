"""The scheduler: crosses models × tasks × adapters × (scorer, pruner) × sparsities × seeds.

Each (model, task, adapter, seed) is fine-tuned once and each importance is
computed once, then reused across sparsity levels. Every cell's row is written
to the leaderboard as soon as it exists; a failing plugin costs only its cells.
"""

from __future__ import annotations

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
            matches = [role for role in roles if name in registry.by_role[role]]
            if not matches:
                hint = " (it is a task: use --tasks)" if name in registry.by_role["task"] else ""
                known = ", ".join(sorted({n for r in roles for n in registry.names(r)}))
                raise UsageError(f"unknown plugin {name!r}{hint} (known: {known})")
            chosen[matches[0]].append(registry.get(matches[0], name))
    chosen["named"] = [role for role in roles if chosen[role]]
    if not chosen["adapter"] and list(names) != ["all"] and DEFAULT_ADAPTER in registry.by_role["adapter"]:
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


def make_plan(config: BenchConfig, registry: Registry, overrides: dict[str, dict[str, Any]]) -> Plan:
    """Validate the whole grid up front (plugins, models, task data) so bad input costs nothing."""
    if not config.seeds:
        raise UsageError("give at least one seed")
    for s in config.sparsities:
        if not 0.0 <= s < 1.0:
            raise UsageError(f"sparsity {s} is outside [0, 1)")
    if (config.train_steps or 0) < 0 or config.batch_size < 1 or config.calib_examples < 1:
        raise UsageError("--train-steps must be >= 0, --batch-size and --calib-examples >= 1")
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
    models = resolve_all(config.models)
    _check_model_kinds(models, tasks)
    sparsities = sorted({s for s in config.sparsities if s > 0})
    _check_head_budgets(config, models, methods, sparsities, overrides)
    recovery = registry.get("adapter", config.recover) if config.recover else None
    if config.recover_steps < 1:
        raise UsageError("--recover-steps must be >= 1")
    return Plan(config, models, tasks, chosen["adapter"], methods, sparsities, overrides, recovery)
