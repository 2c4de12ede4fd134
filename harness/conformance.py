"""Conformance checks every plugin must pass, reusable by third-party packages.

In a plugin's own test suite::

    import pytest
    from harness import conformance

    @pytest.mark.parametrize("item", conformance.registered(), ids=conformance.item_id)
    def test_conformance(item):
        conformance.check_plugin(item.record)

The checks run each role's function on a tiny randomly initialised BERT built
from a config (no download) and verify the contract of :mod:`harness.records`.
``check_plugin(record, device="cuda")`` puts the model and every batch there, as
``harness bench --device cuda`` does: a plugin that makes its tensors on the CPU fails.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping

from harness.plugins import Registered, load_registry, options_for
from harness.records import (
    Adapter,
    Granularity,
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


def registered(extra: tuple[object, ...] = (), dist: str | None = None) -> list[Registered]:
    """Every plugin record installed (entry points) plus ``extra`` plugin objects; only ``dist``'s when given.

    ``dist`` is a distribution name as ``pip`` knows it (``my-pruners``); records
    registered directly (``extra``) are kept with it, so a package tests its own
    plugins, not every installed one.
    """
    from harness.plugins import DIRECT, normalize_dist

    items = list(load_registry(extra))
    if dist is None:
        return items
    return [i for i in items if normalize_dist(i.source) == normalize_dist(dist) or i.dist == DIRECT]


def item_id(item: Registered) -> str:
    return f"{item.role}:{item.record.name}"


def tiny_bert(seed: int = 0, layers: int = 2, heads: int = 4, device: str = "cpu") -> nn.Module:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "bert", vocab_size=64, hidden_size=8 * heads, num_attention_heads=heads, num_hidden_layers=layers,
        intermediate_size=32, max_position_embeddings=32, num_labels=2,
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).to(device).eval()


def tiny_batches(count: int = 2, size: int = 4, tokens: int = 6, seed: int = 0, pad: int = 2,
                 device: str = "cpu") -> list[dict[str, torch.Tensor]]:
    """Random token batches with labels; every second example ends in ``pad`` padding tokens (id 0, mask 0),
    as real batches do, so a scorer that forgets the attention mask is caught. Drawn on the CPU, then moved."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(5, 64, (size, tokens), generator=generator)
        mask = torch.ones_like(ids)
        if pad:
            mask[1::2, tokens - pad:] = 0
            ids = ids.masked_fill(mask == 0, 0)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": torch.arange(size) % 2})
    return [{key: value.to(device) for key, value in batch.items()} for batch in batches]


def _check_common(record: Any) -> None:
    assert record.name and record.name == record.name.strip(), "a plugin needs a non-empty name"
    assert not set(record.name) & set(" ,.=:"), "names must be usable on the command line, in -o NAME.KEY=VALUE " \
        "and qualified as DIST:NAME"
    from harness.options import Options, describe  # typed and dict options, described alike

    specs, declared = describe(record), {*getattr(record, "choices", {}), *getattr(record, "ranges", {})}
    assert all(isinstance(s.name, str) and "." not in s.name for s in specs), "option keys are plain strings"
    assert not (declared and isinstance(record.options, Options)), "typed options declare choices and ranges " \
        "in their dataclass (Literal, option(low=, high=)), not in the record"
    assert declared <= {s.name for s in specs}, f"choices or ranges of unknown options: {sorted(declared)}"
    for spec in specs:
        key, default, low, high = spec.name, spec.default, spec.low, spec.high
        assert not spec.choices or default in spec.choices, f"option {key}: its default must be one of its choices"
        if spec.bounded:
            assert spec.type in ("int", "float"), f"option {key}: a range needs a number"
            assert low is None or high is None or low <= high, f"option {key}: its range is empty"
            assert (low is None or default >= low) and (high is None or default <= high), \
                f"option {key}: its default {default} is outside its range"


def granularity_of(name: str, given: tuple[Granularity, ...] = ()) -> Granularity:
    """The granularity record ``name`` (an installed one, or one of ``given``, e.g. defined in a test)."""
    for granularity in given:
        if granularity.name == name:
            return granularity
    return load_registry().get("granularity", name)


def _targets(granularity: Granularity, model: nn.Module) -> tuple[str, ...]:
    from harness import surgery

    return surgery.target_modules(model, "linear") if granularity.uses_targets else ()


def _score_request(scorer: Scorer, model: nn.Module, granularity: Granularity, device: str) -> ScoreRequest:
    """Calibration batches, plus a budget and a training stream for scorers that learn."""

    def train_batches(steps: int) -> list[dict[str, torch.Tensor]]:
        return tiny_batches(count=steps, seed=1, device=device)

    sparsity = 0.5 if scorer.per_sparsity else None
    return ScoreRequest(model, tiny_batches(device=device), 0, options_for(scorer, {}), sparsity, train_batches,
                        targets=_targets(granularity, model))


def _as_dict(scores: Any) -> dict[str, torch.Tensor]:
    return dict(scores) if isinstance(scores, dict) else {"": scores}


def _shapes(granularity: Granularity, model: nn.Module) -> dict[str, tuple[int, ...]]:
    expected = granularity.shapes(model, _targets(granularity, model))
    return {k: tuple(v) for k, v in _as_dict(expected).items()}


def check_scorer(scorer: Scorer, granularities: tuple[Granularity, ...] = (), device: str = "cpu") -> None:
    """Finite scores of the granularity's shape, deterministic for a seed, weights left untouched.

    Heads: ``[L, H]``; neurons: ``[L, I]``; weights: one tensor per target module, shaped like its weight.
    """
    import torch

    granularity = granularity_of(scorer.granularity, granularities)
    model = tiny_bert(device=device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = _as_dict(scorer.score(_score_request(scorer, model, granularity, device)))
    assert all(isinstance(v, torch.Tensor) for v in scores.values()), "scores are tensors"
    assert {k: tuple(v.shape) for k, v in scores.items()} == _shapes(granularity, model), "scores' shapes"
    assert all(torch.isfinite(v).all() for v in scores.values()), "scores must be finite"
    again = _as_dict(scorer.score(_score_request(scorer, tiny_bert(device=device), granularity, device)))
    same = all(torch.allclose(scores[k], again[k], atol=1e-6) for k in scores)
    assert same, "same model, data and seed must give the same scores"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a scorer must not change the weights"


def _pruner_scores(granularity: Granularity, model: nn.Module, make: Callable[[tuple[int, ...]], torch.Tensor]) -> Any:
    """Scores in the granularity's form on ``model``: one tensor, or weight-shaped tensors by module name."""
    expected = granularity.shapes(model, _targets(granularity, model))
    if isinstance(expected, dict):
        return {name: make(tuple(shape)) for name, shape in expected.items()}
    return make(tuple(expected))


def check_pruner(pruner: Pruner, granularities: tuple[Granularity, ...] = (), device: str = "cpu") -> None:
    """Boolean keep-masks of the scores' shapes removing the requested fraction (within a row per tensor).

    Pruners that use scores keep the most important unit of each tensor; all are
    deterministic for a seed. They get the model the mask is for (``PruneRequest.model``)
    and calibration batches; only one with ``updates_model`` may change its weights.
    """
    import torch

    granularity = granularity_of(pruner.granularity, granularities)
    model, batches = tiny_bert(device=device), tiny_batches(device=device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    scores = _pruner_scores(granularity, model, lambda shape: torch.rand(shape, generator=generator).to(device))
    options = options_for(pruner, {})

    def masks_for(sparsity: float) -> dict[str, torch.Tensor]:
        own = tiny_bert(device=device) if pruner.updates_model else model  # an updating pruner edits its own copy
        return _as_dict(pruner.compute_mask(PruneRequest(scores, sparsity, options, 3, model=own, batches=batches)))

    for sparsity in (0.0, 0.25, 0.5):
        masks, again = masks_for(sparsity), masks_for(sparsity)
        flat = _as_dict(scores)
        assert set(masks) == set(flat), "one mask per scored tensor"
        for name, mask in masks.items():
            assert mask.dtype == torch.bool and mask.shape == flat[name].shape, "keep-mask: bool, same shape"
            assert torch.equal(mask, again[name]), "the same request gives the same mask"
        removed, total = sum(int((~m).sum()) for m in masks.values()), sum(v.numel() for v in flat.values())
        tolerance = sum(max(v.shape) for v in flat.values())  # rounding per row, layer or module
        assert abs(removed - sparsity * total) <= tolerance, f"removed {removed} of {total} at {sparsity}"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a pruner without updates_model must not change weights"
    if pruner.uses_scores:
        ranked = _pruner_scores(granularity, model,
                                lambda shape: torch.arange(float(math.prod(shape)), device=device).reshape(shape))
        masks = _as_dict(pruner.compute_mask(PruneRequest(ranked, 0.25, options, model=model, batches=batches)))
        assert all(bool(m.reshape(-1)[-1]) for m in masks.values()), "the most important unit is kept"


def check_granularity(granularity: Granularity, device: str = "cpu") -> None:
    """Scores' shapes fit the model; applying a keep-mask prunes only the scope, the model still runs,
    gating (``mask``) gives the outputs removal gives, and achieved sparsity is measured in the scope."""
    import copy

    import torch

    from harness import surgery

    model, batch = tiny_bert(layers=4, device=device), tiny_batches(count=1, device=device)[0]  # 4: a median mask
    targets = _targets(granularity, model)  # removes a layer
    scores = _pruner_scores(granularity, model,
                            lambda shape: torch.rand(shape, generator=torch.Generator().manual_seed(1)).to(device))
    keep = {k: v >= v.median() for k, v in _as_dict(scores).items()}
    for mask in keep.values():
        mask.reshape(-1)[0] = True  # never an empty layer
    keep_arg = keep if isinstance(scores, dict) else keep[""]
    scope = granularity.scope(model, targets)
    dense = surgery.count_nonzero(model, scope)
    pruned = granularity.apply(copy.deepcopy(model), keep_arg)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.inference_mode():
        logits = pruned(**inputs).logits
        assert torch.isfinite(logits).all(), "the pruned model runs"
        if granularity.mask is not None:
            with granularity.mask(model, keep_arg):
                masked = model(**inputs).logits
            assert torch.allclose(masked, logits, atol=1e-5), "masking and applying give the same outputs"
    if granularity.achieved is not None:  # units that are not weights (activations): sparsity measured on data
        achieved = granularity.achieved(pruned, tiny_batches(device=device))
        assert isinstance(achieved, float) and 0.0 <= achieved <= 1.0, "achieved sparsity is a fraction in [0, 1]"
    else:
        left = surgery.count_nonzero(pruned, scope)[0] if set(scope) <= {n for n, _ in pruned.named_modules()} else 0
        assert left < dense[0], "applying a mask that removes units lowers the nonzero weights of the scope"
    assert isinstance(granularity.held(pruned, keep_arg), Mapping), "held() gives a mapping of weight masks"


def check_adapter(adapter: Adapter, device: str = "cpu") -> None:
    """Trains for exactly the given steps and returns a model that still runs."""
    import torch

    model = tiny_bert(device=device)
    batches = tiny_batches(count=3, device=device)
    result = adapter.train(TrainRequest(model, iter(batches), 3, 1e-3, 0, options_for(adapter, {})))
    assert isinstance(result, TrainResult)
    assert result.steps == 3 and result.trainable_params > 0
    assert math.isfinite(result.final_loss)
    with torch.inference_mode():
        logits = result.model(input_ids=batches[0]["input_ids"]).logits
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()


def check_task(task: Task, request: TaskRequest | None = None) -> None:
    """Loads without a network when it can (built-in or local data) and gives well-formed splits.

    ``request`` says where the task's data is (``TaskRequest(data_dir=..., seed=0)``) for tasks that need files.
    """
    data = task.load(request or TaskRequest(None, 0, options_for(task, {})))
    assert isinstance(data, TaskData)
    for split in (data.train, data.validation):
        assert len(split) > 0
        assert set(split.labels) <= set(range(len(data.label_names)))
    if data.kind == "causal-lm":  # unlabelled text, scored by perplexity
        assert all(text.strip() for split in (data.train, data.validation) for text in split.text_a), "empty texts"
        return
    assert len(set(data.validation.labels)) > 1, "a validation split with one label cannot rank methods"


CHECKS: dict[type, Callable[..., None]] = {
    Scorer: check_scorer,
    Pruner: check_pruner,
    Adapter: check_adapter,
    Task: check_task,
    Granularity: check_granularity,
}


def check_plugin(record: Any, *, request: TaskRequest | None = None, granularities: tuple[Granularity, ...] = (),
                 device: str = "cpu") -> None:
    """Run the common checks and the checks of the record's role.

    ``request``: where a task finds its data; ``granularities``: granularity
    records not installed (defined in a test) that scorers or pruners use;
    ``device``: where models and batches live (tasks load data, which has none).
    """
    if isinstance(record, Granularity):
        assert record.name and not set(record.name) & set(" ,.=:"), "a granularity needs a plain name"
        check_granularity(record, device)
        return
    _check_common(record)
    if isinstance(record, Task):
        check_task(record, request)
    elif isinstance(record, (Scorer, Pruner)):
        CHECKS[type(record)](record, granularities, device)
    else:
        CHECKS[type(record)](record, device)
