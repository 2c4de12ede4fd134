"""The trivial reference of a task: what a model that learned nothing about the input scores.

A table of scores hides that 0.80 F1 on a paraphrase task is what always
answering "paraphrase" gets. Every row therefore carries its task's chance
score, and rows at or below it are flagged ``at-chance``:

- classification: the best constant prediction, scored with the task's own
  metric on the evaluation labels (accuracy: the largest class's share; binary
  F1: always predicting the positive class; MCC: 0);
- causal LM: the perplexity of a unigram model of the training tokens
  (add-one smoothed over the vocabulary), on the tokens the model predicts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from harness.records import lower_is_better

if TYPE_CHECKING:
    import torch

    from harness.records import Batch, TaskData

FLAG = "at-chance"


def constant_prediction(metric: str, labels: Sequence[int], num_labels: int) -> float:
    """The best score any constant prediction gets on ``labels``, by the task's metric."""
    from harness.batching import metric_value

    if not labels:
        return float("nan")
    return max(metric_value(metric, list(labels), [c] * len(labels), num_labels) for c in range(num_labels))


def unigram_perplexity(train_tokens: torch.Tensor, batches: Sequence[Batch], vocab_size: int) -> float:
    """Perplexity of add-one smoothed unigram frequencies of ``train_tokens`` on the predicted tokens of
    ``batches`` (each block's tokens after its first, where the attention mask is set: what perplexity counts)."""
    import torch

    largest = max([int(train_tokens.max())] + [int(b["labels"].max()) for b in batches])
    counts = torch.bincount(train_tokens.flatten(), minlength=max(vocab_size, largest + 1)).double() + 1.0
    log_p = counts.log() - counts.sum().log()
    total, count = 0.0, 0
    for batch in batches:
        targets = batch["labels"][:, 1:]
        mask = batch["attention_mask"][:, 1:].bool() & (targets >= 0)
        total -= float(log_p[targets[mask]].sum())
        count += int(mask.sum())
    return math.exp(total / count) if count else float("nan")


def reference(data: TaskData, feed: Any, batches: Sequence[Batch], vocab_size: int) -> float | None:
    """The task's chance score on ``batches``, or None where the harness cannot know it (a task that scores the
    model itself, such as an external evaluation suite)."""
    if data.evaluate is not None:
        return None
    if data.kind == "causal-lm":
        train = getattr(feed, "train", None)
        return None if train is None else unigram_perplexity(train, batches, vocab_size)
    labels = [int(label) for batch in batches for label in batch["labels"]]
    return constant_prediction(data.metric, labels, len(data.label_names))


def at_chance(metric: str, score: float, chance: float | None) -> bool:
    """Whether a score is no better than chance (at or below it; at or above it for perplexity)."""
    if chance is None or not math.isfinite(chance) or math.isnan(score):
        return False
    return score >= chance if lower_is_better(metric) else score <= chance
