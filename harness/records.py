"""Typed, frozen records that flow between the harness and its plugins.

Together with :mod:`harness.hookspecs` this module is the whole plugin contract:
a plugin returns role records (:class:`Scorer`, :class:`Pruner`, :class:`Adapter`,
:class:`Task`) and the harness calls their single function with a request record.
Torch is only named for type checkers, so importing the contract stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, Sequence

if TYPE_CHECKING:
    import torch
    from torch import nn

Granularity = Literal["head", "weight", "neuron"]
Batch = Mapping[str, "torch.Tensor"]
METRICS = ("accuracy", "f1", "mcc")


def _no_log(name: str, value: float, step: int) -> None:
    """Default logger of a training run: drops the scalar."""


@dataclass(frozen=True)
class Split:
    """One split of a classification task: one or two text columns and integer labels."""

    text_a: tuple[str, ...]
    labels: tuple[int, ...]
    text_b: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.text_a) != len(self.labels):
            raise ValueError("text_a and labels differ in length")
        if self.text_b is not None and len(self.text_b) != len(self.labels):
            raise ValueError("text_b and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TaskData:
    """What a task hands the harness: data, label names and its primary metric."""

    train: Split
    validation: Split
    label_names: tuple[str, ...]
    metric: str = "accuracy"
    max_length: int = 128
    train_steps: int | None = None  # the task's default fine-tuning budget; --train-steps overrides

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if len(self.label_names) < 2:
            raise ValueError("a task needs at least two labels")


@dataclass(frozen=True)
class TaskRequest:
    """Where a task may find local copies of its data, and the grid seed."""

    data_dir: Path | None
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreRequest:
    """A dense, fine-tuned model and the calibration batches (each carries ``labels``).

    Scorers that learn (``Scorer.per_sparsity``) also get the target ``sparsity``
    and ``train_batches(steps)``, which yields that many shuffled training batches.
    """

    model: nn.Module
    batches: Sequence[Batch]
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    sparsity: float | None = None
    train_batches: Callable[[int], Iterable[Batch]] | None = None
    log: Callable[[str, float, int], None] = _no_log


@dataclass(frozen=True)
class PruneRequest:
    """Scores from a scorer and the fraction of units to remove."""

    scores: torch.Tensor
    sparsity: float
    options: Mapping[str, Any] = field(default_factory=dict)


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
    final_loss: float


@dataclass(frozen=True)
class Scorer:
    """Importance of units: returns a float tensor, higher means more important.

    For ``granularity="head"`` the tensor has shape ``[num_layers, num_heads]``.
    A scorer whose scores depend on the budget (learned gates) sets
    ``per_sparsity=True`` and is run once per sparsity instead of once. One that
    trains the weights of the model it is given (gates learned jointly) sets
    ``updates_model=True``: that model, not the dense base, is then pruned.
    """

    name: str
    granularity: Granularity
    score: Callable[[ScoreRequest], torch.Tensor]
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of string options
    per_sparsity: bool = False
    updates_model: bool = False


@dataclass(frozen=True)
class Pruner:
    """Turns scores into a boolean keep-mask of the same shape (``True`` = keep).

    The harness applies the mask itself (for heads: physical removal), so a
    pruner never touches weights, like ``BasePruningMethod.compute_mask``.
    """

    name: str
    granularity: Granularity
    compute_mask: Callable[[PruneRequest], torch.Tensor]
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of string options


@dataclass(frozen=True)
class Adapter:
    """A way to train a model on a task: full fine-tuning, LoRA, recovery."""

    name: str
    train: Callable[[TrainRequest], TrainResult]
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of string options


@dataclass(frozen=True)
class Task:
    """Data and metric for one benchmark task."""

    name: str
    load: Callable[[TaskRequest], TaskData]
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of string options


ROLE_RECORDS: Mapping[str, type] = {
    "scorer": Scorer,
    "pruner": Pruner,
    "adapter": Adapter,
    "task": Task,
}
