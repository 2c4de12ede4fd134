"""Scorer ``attention-entropy``: a head matters as much as its attention is focused.

For every real (non-padding) query token, the entropy of a head's attention
distribution over the keys is measured; a head's importance is minus its mean
entropy over the calibration set. Diffuse heads (near-uniform attention, high
entropy) mostly average the sequence and are pruned first; sharp heads
(positional, syntactic, [SEP]-attending) are kept. It needs no labels and no
gradients: one inference pass per calibration batch.

Only the public prune-harness API is used: ``harness.hookimpl``, the records,
``harness.modeling.model_inputs`` and ``harness.surgery.head_geometry``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import harness
from harness import Scorer, ScoreRequest

if TYPE_CHECKING:
    import torch
    from torch import nn

NAME = "attention-entropy"
OPTIONS = {
    # Divide by log(#real keys), so short and long sentences weigh the same (entropy in [0, 1]).
    "normalize": True,
    # Use at most this many calibration batches (0: all of them).
    "max_batches": 0,
}


def _set_attention(model: nn.Module, implementation: str | None) -> None:
    """Switch the attention kernel; ``set_attn_implementation`` exists on transformers >= 4.56."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None and implementation is not None:
        setter(implementation)
    if getattr(model.config, "_attn_implementation", None) != implementation:  # older or non-dynamic models
        model.config._attn_implementation = implementation


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Eager attention while open: fused kernels (SDPA, flash) never materialise the probabilities."""
    previous = getattr(model.config, "_attn_implementation", None)
    _set_attention(model, "eager")
    try:
        yield model
    finally:
        _set_attention(model, previous)


def head_entropy(request: ScoreRequest) -> torch.Tensor:
    """Mean attention entropy per head, ``[num_layers, max_heads]`` (absent heads: NaN)."""
    import torch

    from harness import modeling, surgery

    model = request.model
    heads = surgery.head_geometry(model).heads_per_layer
    normalize = bool(request.options.get("normalize", True))
    limit = int(request.options.get("max_batches", 0))
    batches = list(request.batches)[: limit or None]
    if not batches:
        raise ValueError(f"{NAME} needs at least one calibration batch")
    total = torch.zeros(len(heads), max(heads), dtype=torch.float64)
    queries = 0
    was_training = model.training
    model.eval()  # attention dropout off: entropy of the model as it will be used
    try:
        with eager_attention(model), torch.no_grad():
            for batch in batches:
                inputs = modeling.model_inputs(batch)
                mask = inputs.get("attention_mask")
                if mask is None:
                    mask = torch.ones_like(inputs["input_ids"])
                real = mask.bool()  # [B, T]
                attentions = model(**inputs, output_attentions=True).attentions
                if not attentions or len(attentions) != len(heads):
                    raise RuntimeError(f"{NAME}: the model returned no attention probabilities")
                scale = torch.ones(real.shape[0], dtype=torch.float64)
                if normalize:  # max entropy of a query is log(#real keys); a 1-token input has entropy 0
                    scale = torch.log(real.sum(-1).clamp_min(2).double())
                weight = real.double() / scale[:, None]  # [B, T]: padded queries count for nothing
                for layer, probs in enumerate(attentions):  # probs: [B, H_layer, T, T]
                    entropy = torch.special.entr(probs.double()).sum(-1)  # [B, H, T]
                    total[layer, : probs.shape[1]] += torch.einsum("bht,bt->h", entropy, weight)
                queries += int(real.sum())
    finally:
        model.train(was_training)
    mean = total / max(queries, 1)
    for layer, n in enumerate(heads):
        mean[layer, n:] = math.nan
    return mean


def score(request: ScoreRequest) -> torch.Tensor:
    """Importance = -mean entropy; heads a pruned layer no longer has score below every real head."""
    import torch

    importance = -head_entropy(request)
    present = ~torch.isnan(importance)
    floor = importance[present].min() - 1.0
    return torch.where(present, importance, floor).float()


@harness.hookimpl
def harness_scorers() -> list[Scorer]:
    return [
        Scorer(
            name=NAME,
            granularity="head",
            score=score,
            description="minus mean attention entropy over real tokens (focused heads are kept)",
            options=OPTIONS,
        )
    ]
