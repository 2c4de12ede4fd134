"""Typed, frozen records that flow between the harness and its plugins.

Together with :mod:`harness.hookspecs` this module is the whole plugin contract:
a plugin returns role records (:class:`Scorer`, :class:`Pruner`, :class:`Adapter`,
:class:`Task`) and the harness calls their single function with a request record.
Torch is only named for type checkers, so importing the contract stays cheap.
Every model and batch in a request lives on the run's device (``--device``),
and training, scoring and pruning run under autocast to ``--dtype`` with float32
parameters (see :mod:`harness.devices`); scores reach a pruner as CPU tensors.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, Sequence

if TYPE_CHECKING:
    import torch
    from torch import nn

Batch = Mapping[str, "torch.Tensor"]
METRICS = ("accuracy", "f1", "mcc", "perplexity")
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"})


def lower_is_better(metric: str) -> bool:
    """Whether smaller is better for a row's metric, including an external suite's ``task/metric,filter`` names
    (lm-eval's ``wikitext/word_perplexity``): reports and flags must not rank a perplexity upside down."""
    base = str(metric).rsplit("/", 1)[-1].split(",", 1)[0]
    return base in LOWER_IS_BETTER
TaskKind = Literal["classification", "causal-lm"]


def _no_log(name: str, value: float, step: int) -> None:
    """Default logger of a training run: drops the scalar."""


@dataclass(frozen=True)
class Split:
    """One split of a task: one or two text columns and integer labels (none for language modelling)."""

    text_a: tuple[str, ...]
    labels: tuple[int, ...]
    text_b: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.labels and len(self.text_a) != len(self.labels):
            raise ValueError("text_a and labels differ in length")
        if self.text_b is not None and len(self.text_b) != len(self.text_a):
            raise ValueError("text_b and text_a differ in length")

    def __len__(self) -> int:
        return len(self.text_a)


@dataclass(frozen=True)
class EvalRequest:
    """What a task that evaluates the model itself (``TaskData.evaluate``) gets: the model as the cell has it.

    ``limit`` is ``--eval-limit`` (``None``: everything), ``batch_size`` is
    ``--batch-size`` and ``seed`` the row's seed.
    """

    model: nn.Module
    tokenizer: Any
    batch_size: int
    limit: int | None
    seed: int


@dataclass(frozen=True)
class TaskData:
    """What a task hands the harness: data, label names and its primary metric.

    ``kind="causal-lm"``: the splits hold unlabelled texts, the model is a causal
    language model, ``max_length`` is the block length in tokens and the metric is
    perplexity (lower is better). A task that scores the model its own way (an
    external evaluation suite) sets ``evaluate``: it returns ``{metric: value}``,
    one leaderboard row each, the first named ``metric`` (not one of ``METRICS``);
    the splits then only feed training and calibration.
    """

    train: Split
    validation: Split
    label_names: tuple[str, ...]
    metric: str = "accuracy"
    max_length: int = 128
    train_steps: int | None = None  # the task's default fine-tuning budget; --train-steps overrides
    kind: TaskKind = "classification"
    protocol: Mapping[str, str | float] = field(default_factory=dict)  # how it was built: in every row's extras
    evaluate: Callable[[EvalRequest], Mapping[str, float]] | None = None  # scores the model itself: {metric: value}

    def __post_init__(self) -> None:
        own = self.evaluate is not None  # the task names its own metrics
        if not own and self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if own and not self.metric:
            raise ValueError("a task with evaluate names the first metric it returns")
        if self.kind == "causal-lm":
            if not own and self.metric != "perplexity":
                raise ValueError("a causal-lm task is scored by perplexity")
        elif self.kind != "classification":
            raise ValueError(f"kind must be classification or causal-lm, not {self.kind!r}")
        elif (not own and self.metric == "perplexity") or len(self.label_names) < 2:
            raise ValueError("a classification task needs at least two labels and a classification metric")
        if not len(self.train) or not len(self.validation):
            raise ValueError("both splits need at least one example")


@dataclass(frozen=True)
class TaskRequest:
    """Where a task may find local copies of its data, the grid seed, and the training batch size.

    ``batch_size`` lets a task express its default budget in epochs
    (``TaskData.train_steps = ceil(len(train) / batch_size)`` is one epoch).
    """

    data_dir: Path | None
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 32


@dataclass(frozen=True)
class ScoreRequest:
    """A dense, fine-tuned model and the calibration batches (each carries ``labels``).

    Scorers that learn (``Scorer.per_sparsity``) also get the target ``sparsity``
    and ``train_batches(steps)``, which yields that many shuffled training batches.
    Weight scorers score exactly the modules named in ``targets`` (dotted names
    from the model root, each with a ``weight``).
    """

    model: nn.Module
    batches: Sequence[Batch]
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    sparsity: float | None = None
    train_batches: Callable[[int], Iterable[Batch]] | None = None
    log: Callable[[str, float, int], None] = _no_log
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class PruneRequest:
    """Scores from a scorer and the fraction of units to remove.

    ``scores`` is a tensor for heads, neurons and layers and a mapping from module name
    to a weight-shaped tensor for weights. ``kv_heads`` gives, per layer, the
    number of key/value heads when attention is grouped (GQA/MQA); it is empty
    when every query head has its own. ``seed`` drives pruners that draw at random.
    ``model`` is the model the mask will be applied to, for reading only (module
    types and layouts, e.g. which axis of a weight is its input); ``None`` when a
    pruner is dry-run on shapes alone before any model is loaded. ``log(name,
    value, step)`` records scalars (e.g. per-layer sparsities it chose): the last
    value of each lands in the row's ``extras``. ``batches`` are the unit's
    calibration batches (as ``ScoreRequest.batches``), for pruners that read
    activations; for a pruner with ``Pruner.updates_model`` the ``model`` is its
    own copy, to change in place.
    """

    scores: Any
    sparsity: float
    options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    kv_heads: tuple[int, ...] = ()
    model: nn.Module | None = None
    log: Callable[[str, float, int], None] = _no_log
    batches: Sequence[Batch] = ()


@dataclass(frozen=True)
class TrainRequest:
    """A model to train in place or wrap, and exactly ``steps`` training batches."""

    model: nn.Module
    batches: Iterable[Batch]
    steps: int
    learning_rate: float
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    log: Callable[[str, float, int], None] = _no_log


@dataclass(frozen=True)
class TrainResult:
    """The trained model (ready for inference) and what the training cost."""

    model: nn.Module
    trainable_params: int
    steps: int
    final_loss: float  # training loss at the end (the shared loop: mean of the last tenth of the steps)
    config: Mapping[str, Any] = field(default_factory=dict)  # what a row records of the adapter's setup
    updates: Mapping[str, torch.Tensor] = field(default_factory=dict)  # module name -> learned update dW


@dataclass(frozen=True)
class Scorer:
    """Importance of units: higher means more important.

    For ``granularity="head"`` a tensor ``[num_layers, num_heads]``; for
    ``"neuron"`` (FFN intermediate units) a tensor ``[num_layers, ffn_width]``;
    for ``"layer"`` (whole blocks) a tensor ``[num_layers]``;
    for ``"weight"`` a mapping from each of ``ScoreRequest.targets`` to a tensor
    shaped like that module's weight.
    A scorer whose scores depend on the budget (learned gates) sets
    ``per_sparsity=True`` and is run once per sparsity instead of once. One that
    trains the weights of the model it is given (gates learned jointly) sets
    ``updates_model=True``: that model, not the dense base, is then pruned.
    """

    name: str
    granularity: str  # the name of a Granularity record ("head", "neuron", "weight", or a plugin's)
    score: Callable[[ScoreRequest], Any]
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of string options
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)  # inclusive; None: open
    per_sparsity: bool = False
    updates_model: bool = False
    baseline: bool = False  # added to every grid that benchmarks its granularity, unless --no-baselines


@dataclass(frozen=True)
class Pruner:
    """Turns scores into a boolean keep-mask of the same shape (``True`` = keep).

    The harness applies the mask itself (heads and neurons: physical removal;
    weights: ``torch.nn.utils.prune`` masks made permanent), so a pruner never
    touches weights, like ``BasePruningMethod.compute_mask``. A pruner with
    ``uses_scores=False`` (random pruning) is run once, not once per scorer.
    The exception declares itself: ``updates_model=True`` (SparseGPT, which
    reconstructs the weights it keeps) gets its own copy of the model in
    ``PruneRequest.model``, may change its weights, and the mask is applied to
    that copy; its rows say ``updates_weights``.
    """

    name: str
    granularity: str  # the name of a Granularity record: must match the scorers it is paired with
    compute_mask: Callable[[PruneRequest], Any]
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of string options
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)  # inclusive; None: open
    uses_scores: bool = True
    updates_model: bool = False


@dataclass(frozen=True)
class Adapter:
    """A way to train a model on a task: full fine-tuning, LoRA, recovery."""

    name: str
    train: Callable[[TrainRequest], TrainResult]
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of string options
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)  # inclusive; None: open


@dataclass(frozen=True)
class Task:
    """Data and metric for one benchmark task."""

    name: str
    load: Callable[[TaskRequest], TaskData]
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of string options
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)  # inclusive; None: open


def _nothing_held(model: nn.Module, keep: Any) -> Mapping[str, torch.Tensor]:
    """Structures removed physically stay removed while a pruned model trains: no weight needs holding."""
    return {}


@dataclass(frozen=True)
class Granularity:
    """What one unit of pruning is, and everything the harness does that depends on it.

    Scorers and pruners name a granularity; the harness asks it for the shape of
    the scores it expects on a model (``shapes``: a tuple for one tensor, or a
    mapping from module name to shape), turns a pruner's keep-mask into a pruned
    model (``apply``: physical removal or permanent zeros), counts achieved
    sparsity over the weights of ``scope`` and, during recovery training, holds
    the weights ``held(model, keep)`` names at zero (weight-shaped masks by module name). ``targets`` are the modules the
    ``--targets`` groups select, for granularities that set ``uses_targets``
    (weights); the others ignore them. ``mask`` (optional) gates the units
    without removing them, which must give the same outputs as ``apply``.
    ``config_shapes`` (optional) gives the score shapes from a model's config
    alone, so pruners are dry-run on every model before any work.
    ``achieved`` (optional) is for units that are not weights (activations
    zeroed at run time): the achieved sparsity measured on a pruned model over
    the given batches (the evaluation data), used instead of counting weights.
    """

    name: str
    shapes: Callable[[nn.Module, tuple[str, ...]], Any]
    apply: Callable[[nn.Module, Any], nn.Module]
    scope: Callable[[nn.Module, tuple[str, ...]], tuple[str, ...]]
    description: str = ""
    uses_targets: bool = False
    held: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]] = _nothing_held
    mask: Callable[[nn.Module, Any], AbstractContextManager[Any]] | None = None
    config_shapes: Callable[[Any], Any] | None = None
    achieved: Callable[[nn.Module, Sequence[Batch]], float] | None = None


ROLE_RECORDS: Mapping[str, type] = {
    "scorer": Scorer,
    "pruner": Pruner,
    "adapter": Adapter,
    "task": Task,
    "granularity": Granularity,
}
