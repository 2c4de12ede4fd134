"""Conformance checks every plugin must pass, reusable by third-party packages.

In a plugin's own test suite::

    import pytest
    from harness import conformance

    @pytest.mark.parametrize("item", conformance.registered(), ids=conformance.item_id)
    def test_conformance(item):
        conformance.check_plugin(item.record)

The checks run each role's function on a tiny randomly initialised BERT built
from a config (no download) and verify the contract of :mod:`harness.records`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from harness.plugins import Registered, load_registry
from harness.records import (
    Adapter,
    Pruner,
    PruneRequest,
    Scorer,
    ScoreRequest,
    Task,
    TaskData,
    TaskRequest,
    TrainRequest,
    TrainResult,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


def registered(extra: tuple[object, ...] = ()) -> list[Registered]:
    """Every plugin record installed (entry points) plus ``extra`` plugin objects."""
    return list(load_registry(extra))


def item_id(item: Registered) -> str:
    return f"{item.role}:{item.record.name}"


def tiny_bert(seed: int = 0, layers: int = 2, heads: int = 4) -> nn.Module:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "bert", vocab_size=64, hidden_size=8 * heads, num_attention_heads=heads, num_hidden_layers=layers,
        intermediate_size=32, max_position_embeddings=32, num_labels=2,
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def tiny_batches(count: int = 2, size: int = 4, tokens: int = 6, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(5, 64, (size, tokens), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(size) % 2})
    return batches


def _check_common(record: Any) -> None:
    assert record.name and record.name == record.name.strip(), "a plugin needs a non-empty name"
    assert not set(record.name) & set(" ,.=:"), "names must be usable on the command line, in -o NAME.KEY=VALUE " \
        "and qualified as DIST:NAME"
    assert all(isinstance(k, str) and "." not in k for k in record.options), "option keys are plain strings"
    for key, allowed in record.choices.items():
        assert record.options.get(key) in allowed, f"option {key}: its default must be one of its choices"
    for key, (low, high) in getattr(record, "ranges", {}).items():
        default = record.options.get(key)
        assert isinstance(default, (int, float)) and not isinstance(default, bool), f"option {key}: a range needs a number"
        assert low is None or high is None or low <= high, f"option {key}: its range is empty"
        assert (low is None or default >= low) and (high is None or default <= high), \
            f"option {key}: its default {default} is outside its range"


def _score_request(scorer: Scorer, model: nn.Module) -> ScoreRequest:
    """Calibration batches, plus a budget and a training stream for scorers that learn."""

    def train_batches(steps: int) -> list[dict[str, torch.Tensor]]:
        return tiny_batches(count=steps, seed=1)

    from harness import surgery

    sparsity = 0.5 if scorer.per_sparsity else None
    targets = surgery.target_modules(model, "linear") if scorer.granularity == "weight" else ()
    return ScoreRequest(model, tiny_batches(), 0, dict(scorer.options), sparsity, train_batches, targets=targets)


def _as_dict(scores: Any) -> dict[str, torch.Tensor]:
    return dict(scores) if isinstance(scores, dict) else {"": scores}


def _expected_shapes(scorer: Scorer, model: nn.Module) -> dict[str, tuple[int, ...]]:
    from harness import surgery

    if scorer.granularity == "head":
        geometry = surgery.head_geometry(model)
        return {"": (geometry.num_layers, max(geometry.heads_per_layer))}
    if scorer.granularity == "neuron":
        widths = surgery.ffn_widths(model)
        return {"": (len(widths), max(widths))}
    modules = dict(model.named_modules())
    return {name: tuple(modules[name].weight.shape) for name in surgery.target_modules(model, "linear")}


def check_scorer(scorer: Scorer) -> None:
    """Finite scores of the granularity's shape, deterministic for a seed, weights left untouched.

    Heads: ``[L, H]``; neurons: ``[L, I]``; weights: one tensor per target module, shaped like its weight.
    """
    import torch

    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = _as_dict(scorer.score(_score_request(scorer, model)))
    assert all(isinstance(v, torch.Tensor) for v in scores.values()), "scores are tensors"
    assert {k: tuple(v.shape) for k, v in scores.items()} == _expected_shapes(scorer, model), "scores' shapes"
    assert all(torch.isfinite(v).all() for v in scores.values()), "scores must be finite"
    again = _as_dict(scorer.score(_score_request(scorer, tiny_bert())))
    same = all(torch.allclose(scores[k], again[k], atol=1e-6) for k in scores)
    assert same, "same model, data and seed must give the same scores"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a scorer must not change the weights"


def _pruner_scores(pruner: Pruner, make: Callable[[tuple[int, int]], torch.Tensor]) -> Any:
    """Scores in the granularity's form: a ``[4, 6]`` tensor, or two weight-shaped tensors by module name."""
    if pruner.granularity == "weight":
        return {"layer.0.dense": make((6, 8)), "layer.1.dense": make((4, 8))}
    return make((4, 6))


def check_pruner(pruner: Pruner) -> None:
    """Boolean keep-masks of the scores' shapes removing the requested fraction (within a row per tensor).

    Pruners that use scores keep the most important unit of each tensor; all are
    deterministic for a seed.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    scores = _pruner_scores(pruner, lambda shape: torch.rand(shape, generator=generator))
    for sparsity in (0.0, 0.25, 0.5):
        request = PruneRequest(scores, sparsity, dict(pruner.options), seed=3)
        masks, again = _as_dict(pruner.compute_mask(request)), _as_dict(pruner.compute_mask(request))
        flat = _as_dict(scores)
        assert set(masks) == set(flat), "one mask per scored tensor"
        for name, mask in masks.items():
            assert mask.dtype == torch.bool and mask.shape == flat[name].shape, "keep-mask: bool, same shape"
            assert torch.equal(mask, again[name]), "the same request gives the same mask"
        removed, total = sum(int((~m).sum()) for m in masks.values()), sum(v.numel() for v in flat.values())
        tolerance = sum(v.shape[0] if pruner.granularity != "weight" else v.shape[1] for v in flat.values())
        assert abs(removed - sparsity * total) <= tolerance, f"removed {removed} of {total} at {sparsity}"
    if pruner.uses_scores:
        ranked = _pruner_scores(pruner, lambda shape: torch.arange(float(shape[0] * shape[1])).reshape(shape))
        masks = _as_dict(pruner.compute_mask(PruneRequest(ranked, 0.25, dict(pruner.options))))
        if pruner.granularity == "weight":
            assert all(bool(m.reshape(-1)[-1]) for m in masks.values()), "the most important weight is kept"
        else:
            assert bool(masks[""][:, -1].all()), "the most important unit of each row is kept"


def check_adapter(adapter: Adapter) -> None:
    """Trains for exactly the given steps and returns a model that still runs."""
    import torch

    model = tiny_bert()
    batches = tiny_batches(count=3)
    result = adapter.train(TrainRequest(model, iter(batches), 3, 1e-3, 0, dict(adapter.options)))
    assert isinstance(result, TrainResult)
    assert result.steps == 3 and result.trainable_params > 0
    assert math.isfinite(result.final_loss)
    with torch.inference_mode():
        logits = result.model(input_ids=batches[0]["input_ids"]).logits
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()


def check_task(task: Task, request: TaskRequest | None = None) -> None:
    """Loads without a network when it can (built-in or local data) and gives well-formed splits."""
    data = task.load(request or TaskRequest(None, 0, dict(task.options)))
    assert isinstance(data, TaskData)
    for split in (data.train, data.validation):
        assert len(split) > 0
        assert set(split.labels) <= set(range(len(data.label_names)))
    assert len(set(data.validation.labels)) > 1, "a validation split with one label cannot rank methods"


CHECKS: dict[type, Callable[..., None]] = {
    Scorer: check_scorer,
    Pruner: check_pruner,
    Adapter: check_adapter,
    Task: check_task,
}


def check_plugin(record: Any, **kwargs: Any) -> None:
    """Run the common checks and the checks of the record's role."""
    _check_common(record)
    CHECKS[type(record)](record, **kwargs)
