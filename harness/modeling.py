"""What plugins call on a model: its inputs, logits, losses and predictions, its size, and the shared
training loop every adapter uses (:func:`train_adamw`). Speed and FLOPs are :mod:`harness.measures`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from harness.records import Batch, TrainRequest

if TYPE_CHECKING:
    import torch
    from torch import nn

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """The tensors a model's forward takes (drops ``labels`` and anything else)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(**model_inputs(batch)).logits


def per_example_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of each example (shape ``[B]``), so per-example gradients stay separable.

    Classification: the loss of the example's label. Causal LM (labels ``[B, T]``):
    the mean next-token loss over the example's tokens.
    """
    import torch.nn.functional as F

    if batch["labels"].dim() == 2:
        losses, tokens = token_losses(model, batch)
        return losses / tokens.clamp(min=1)
    return F.cross_entropy(logits(model, batch), batch["labels"], reduction="none")


def token_losses(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy per example and the number of tokens it covers (both ``[B]``).

    Position t predicts label t+1; labels of -100 and padding are not counted.
    """
    import torch.nn.functional as F

    scores = logits(model, batch)[:, :-1].float()
    target = batch["labels"][:, 1:].clone()
    if "attention_mask" in batch:
        target[batch["attention_mask"][:, 1:] == 0] = -100
    flat = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), target.reshape(-1), reduction="none", ignore_index=-100)
    return flat.view(target.shape).sum(1), (target != -100).sum(1)


def predict(model: nn.Module, batches: Iterable[Batch]) -> list[int]:
    import torch

    was_training = model.training
    model.eval()
    predictions: list[int] = []
    with torch.inference_mode():
        for batch in batches:
            predictions.extend(logits(model, batch).argmax(-1).tolist())
    model.train(was_training)
    return predictions


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def train_adamw(request: TrainRequest) -> tuple[int, float]:
    """Train ``request.model`` in place: AdamW, linear warm-up then decay, clipping; ``(steps, final loss)``.

    Public so that every adapter (built-in or third-party) shares one loop instead
    of importing another plugin. Only parameters with ``requires_grad`` are
    optimised; options ``weight_decay``, ``warmup_ratio`` and ``max_grad_norm``
    are required. Seeds torch with ``request.seed`` first, logs ``train/loss`` each
    step and leaves the model in eval mode. The final loss is the mean over the
    last tenth of the steps: one batch's loss is too noisy to tell a run that
    learned from one that diverged.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    model, options = request.model, request.options
    torch.manual_seed(request.seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=request.learning_rate, weight_decay=float(options["weight_decay"]))
    warmup = int(float(options["warmup_ratio"]) * request.steps)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, max(request.steps, 1))
    model.train()
    losses: list[float] = []
    step = 0
    for step, batch in enumerate(request.batches, start=1):
        loss = per_example_loss(model, batch).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, float(options["max_grad_norm"]))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        request.log("train/loss", losses[-1], step)
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return step, (sum(tail) / len(tail) if tail else float("nan"))
