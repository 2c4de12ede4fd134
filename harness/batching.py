"""How a task's data reaches a model: batches for evaluation, calibration and training, and its quality score.

Classification tasks tokenize examples one by one (padding per batch) and score
predictions with scikit-learn. Causal-LM tasks concatenate their texts into one
token stream cut into fixed blocks (as language-model training and perplexity
evaluation usually do), so every batch is full and every token counts once.
The runner only talks to a :class:`Feed`, whatever the task kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence, Sized

from harness import modeling

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from harness.records import Batch, Split, TaskData

EVAL_BATCH = 64
LM_EVAL_BATCH = 8


@dataclass(frozen=True)
class Quality:
    """A model's score on the validation split and what makes it suspect (row flags)."""

    score: float
    flags: tuple[str, ...] = ()


class Feed(Protocol):
    """What the runner asks of a task's data, whatever its kind: batches and one quality number."""

    def evaluation(self, limit: int | None) -> list[Batch]: ...

    def calibration(self, count: int, batch_size: int, seed: int) -> list[Batch]: ...

    def stream(self, steps: int, batch_size: int, seed: int) -> Iterator[Batch]: ...

    def quality(self, model: nn.Module, batches: Sequence[Batch]) -> Quality: ...


class Examples:
    """Classification: one example per row, the metric from predicted labels."""

    def __init__(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> None:
        self.data, self.tokenizer = data, tokenizer

    def evaluation(self, limit: int | None) -> list[Batch]:
        validation = self.data.validation
        indices = range(min(len(validation), limit)) if limit else None
        return batches(self.tokenizer, validation, EVAL_BATCH, self.data.max_length, indices)

    def calibration(self, count: int, batch_size: int, seed: int) -> list[Batch]:
        indices = calibration_indices(self.data.train, count, seed)
        return batches(self.tokenizer, self.data.train, batch_size, self.data.max_length, indices)

    def stream(self, steps: int, batch_size: int, seed: int) -> Iterator[Batch]:
        return training_stream(self.tokenizer, self.data.train, steps, batch_size, self.data.max_length, seed)

    def quality(self, model: nn.Module, batches: Sequence[Batch]) -> Quality:
        """The metric, flagged ``constant-predictions`` when every example gets one label.

        Such a model scores what a constant guess scores (accuracy = that class's
        share, MCC = 0), which a table of numbers hides.
        """
        labels = [int(label) for batch in batches for label in batch["labels"]]
        predictions = modeling.predict(model, batches)
        score = metric_value(self.data.metric, labels, predictions, len(self.data.label_names))
        return Quality(score, ("constant-predictions",) if len(set(predictions)) == 1 < len(predictions) else ())


def token_blocks(tokenizer: PreTrainedTokenizerBase, split: Split, length: int) -> torch.Tensor:
    """The split's texts as one stream (an end-of-text token between texts) cut into ``[N, length]`` blocks.

    The tail that does not fill a block is dropped, unless the whole stream is
    shorter than one block, which then becomes the only (short) block.
    """
    import torch

    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(list(split.text_a), add_special_tokens=False)["input_ids"]:
        stream.extend([*ids, *separator])
    if not stream:
        raise ValueError("the text has no tokens")
    if len(stream) < length:
        return torch.tensor([stream])
    whole = len(stream) // length * length
    return torch.tensor(stream[:whole]).view(-1, length)


def block_batch(blocks: torch.Tensor) -> Batch:
    """Blocks as a batch whose labels are its inputs (the model shifts them to predict the next token)."""
    import torch

    return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks), "labels": blocks.clone()}


class Blocks:
    """Causal language modelling: fixed token blocks, quality = perplexity (lower is better)."""

    def __init__(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> None:
        self.train = token_blocks(tokenizer, data.train, data.max_length)
        self.validation = token_blocks(tokenizer, data.validation, data.max_length)

    def evaluation(self, limit: int | None) -> list[Batch]:
        blocks = self.validation[:limit] if limit else self.validation
        return [block_batch(blocks[i : i + LM_EVAL_BATCH]) for i in range(0, len(blocks), LM_EVAL_BATCH)]

    def calibration(self, count: int, batch_size: int, seed: int) -> list[Batch]:
        chosen = calibration_indices(self.train, count, seed)
        return [block_batch(self.train[chosen[i : i + batch_size]]) for i in range(0, len(chosen), batch_size)]

    def stream(self, steps: int, batch_size: int, seed: int) -> Iterator[Batch]:
        for chosen in shuffled_chunks(len(self.train), steps, batch_size, seed):
            yield block_batch(self.train[chosen])

    def quality(self, model: nn.Module, batches: Sequence[Batch]) -> Quality:
        value = perplexity(model, batches)
        return Quality(value, () if math.isfinite(value) else ("non-finite-perplexity",))


def perplexity(model: nn.Module, batches: Sequence[Batch]) -> float:
    """exp(mean negative log-likelihood per predicted token) over all batches."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            losses, tokens = modeling.token_losses(model, batch)
            total += float(losses.sum())
            count += int(tokens.sum())
    model.train(was_training)
    if not count:
        return float("nan")
    try:
        return math.exp(total / count)
    except OverflowError:  # a broken model's mean NLL above ~709 nats: infinitely perplexed, flagged downstream
        return float("inf")


def feed_for(data: TaskData, tokenizer: PreTrainedTokenizerBase) -> Feed:
    """The feed of the task's kind."""
    return Blocks(data, tokenizer) if data.kind == "causal-lm" else Examples(data, tokenizer)


def tokenize(tokenizer: PreTrainedTokenizerBase, split: Split, indices: Sequence[int], max_length: int) -> Batch:
    import torch

    text_a = [split.text_a[i] for i in indices]
    text_b = [split.text_b[i] for i in indices] if split.text_b is not None else None
    encoded = tokenizer(text_a, text_b, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    batch["labels"] = torch.tensor([split.labels[i] for i in indices])
    return batch


def batches(
    tokenizer: PreTrainedTokenizerBase, split: Split, batch_size: int, max_length: int, indices: Sequence[int] | None = None
) -> list[Batch]:
    """Fixed batches in order (evaluation, calibration); sorted by length to waste less padding."""
    order = list(range(len(split))) if indices is None else list(indices)
    order.sort(key=lambda i: len(split.text_a[i]) + len(split.text_b[i] if split.text_b else ""))
    return [tokenize(tokenizer, split, order[i : i + batch_size], max_length) for i in range(0, len(order), batch_size)]


def training_stream(
    tokenizer: PreTrainedTokenizerBase, split: Split, steps: int, batch_size: int, max_length: int, seed: int
) -> Iterator[Batch]:
    """Exactly ``steps`` shuffled batches, reshuffling each epoch with a seeded generator."""
    for chunk in shuffled_chunks(len(split), steps, batch_size, seed):
        yield tokenize(tokenizer, split, chunk, max_length)


def shuffled_chunks(size: int, steps: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """``steps`` lists of ``batch_size`` indices below ``size``: seeded epochs, reshuffled each time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(rng.permutation(size).tolist())
        chunk, order = order[:batch_size], order[batch_size:]
        yield chunk


def calibration_indices(split: Sized, count: int, seed: int) -> list[int]:
    """A seeded, sorted sample of ``count`` indices of ``split`` (anything with a length)."""
    import numpy as np

    rng = np.random.default_rng(seed + 10_000)
    return sorted(rng.permutation(len(split))[: min(count, len(split))].tolist())


def metric_value(name: str, labels: Sequence[int], predictions: Sequence[int], num_labels: int = 2) -> float:
    """The task's primary metric, from scikit-learn (F1 is binary for two labels, macro above)."""
    from sklearn import metrics

    if name == "accuracy":
        return float(metrics.accuracy_score(labels, predictions))
    if name == "f1":
        average = "binary" if num_labels == 2 else "macro"
        return float(metrics.f1_score(labels, predictions, average=average, zero_division=0))
    if name == "mcc":
        return float(metrics.matthews_corrcoef(labels, predictions))
    raise ValueError(f"unknown metric {name!r}")
