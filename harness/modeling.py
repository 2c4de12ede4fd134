"""What plugins call on a model: its inputs, logits, losses and predictions, its size, the shared
training loop every adapter uses (:func:`train_adamw`), and the process's heap policy for tensors
(:func:`bound_heap`, :func:`release_memory`). Speed and FLOPs are :mod:`harness.measures`."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Iterable

from harness.records import Batch, TrainRequest

if TYPE_CHECKING:
    import torch
    from torch import nn

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Blocks from this size up (MiniLM's FFN activations and attention scores at batch 32 from ~20 tokens, its weight
# matrices) get their own mapping, returned to the OS when freed; smaller ones stay in the heap. See bound_heap.
HEAP_MMAP_BYTES = 4 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


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


def full_precision(model: nn.Module) -> Any:
    """A context where autocast is off on the model's device: what a plugin computes from weights inside a stage that
    runs under ``--dtype`` autocast (a merged low-rank update, a Hessian) stays float32."""
    from harness.devices import device_of
    from harness.devices import full_precision as off

    return off(device_of(model))


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
    bound_heap()
    losses = _adamw_losses(request)
    request.model.eval()
    release_memory()  # the optimizer state and the last activations are gone: give their pages back
    tail = losses[-max(1, len(losses) // 10):]
    return len(losses), (sum(tail) / len(tail) if tail else float("nan"))


def _adamw_losses(request: TrainRequest) -> list[float]:
    """The loop of :func:`train_adamw`, apart so that its optimizer state is freed when it returns."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    model, options = request.model, request.options
    torch.manual_seed(request.seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    # foreach: one kernel per operation over all tensors, bit-identical to the per-tensor loop torch picks on a CPU
    # (a MiniLM step's update 1.4x faster); fused would be faster still but rounds differently
    optimizer = torch.optim.AdamW(parameters, lr=request.learning_rate, weight_decay=float(options["weight_decay"]),
                                  foreach=True)
    warmup = int(float(options["warmup_ratio"]) * request.steps)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, max(request.steps, 1))
    scaler = _loss_scaler(parameters)
    model.train()
    losses: list[float] = []
    for step, batch in enumerate(request.batches, start=1):
        loss = per_example_loss(model, batch).mean()
        if scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, float(options["max_grad_norm"]))
            optimizer.step()
        else:
            _scaled_step(scaler, loss, optimizer, parameters, float(options["max_grad_norm"]))
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        request.log("train/loss", losses[-1], step)
    return losses


def _loss_scaler(parameters: list[torch.Tensor]) -> Any | None:
    """A gradient scaler when the loop runs under float16 autocast (``--dtype float16``), whose small gradients
    underflow unscaled; ``None`` otherwise (bfloat16 has float32's range)."""
    import torch

    kind = parameters[0].device.type if parameters else "cpu"  # the loop's parameters, not the whole model's
    if not torch.is_autocast_enabled(kind) or torch.get_autocast_dtype(kind) != torch.float16:
        return None
    return torch.amp.GradScaler(kind)


def _scaled_step(scaler: Any, loss: torch.Tensor, optimizer: Any, parameters: list[torch.Tensor], clip: float) -> None:
    """One float16 step: scaled backward, unscaled clipping, a step skipped when a gradient overflowed."""
    import torch

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, clip)
    scaler.step(optimizer)
    scaler.update()


@cache
def _libc() -> Any | None:
    """The C library's allocator controls (glibc), or ``None`` where it has none (macOS, musl, Windows); looked up
    once per process: :func:`release_memory` runs after every cell."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only: raises AttributeError elsewhere
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def bound_heap(mmap_bytes: int = HEAP_MMAP_BYTES) -> bool:
    """Serve every block of ``mmap_bytes`` or more from its own mapping, unmapped when freed; whether it could.

    Why: CPU tensors come from glibc's malloc, whose mmap threshold rises (up to
    32 MB) once a large block is freed, which loading a model does. After that,
    activations live in the heap, and a training loop whose batches change length
    every step fragments it. Measured on a MiniLM fine-tune on SST-2 (150 steps,
    batch 32, up to 64 tokens, 2 cores; RSS of the process): glibc's default
    policy peaked at 1684 MB and kept 1462 MB after training; a trim after
    training alone keeps 596 MB (same peak); this threshold at 4 MiB with the trim
    peaks at 1593 MB at the same speed (0.74 s/step vs 0.79); at 1 MiB the peak
    falls to 1243 MB but each step costs 32% more (page faults on every fresh
    mapping), so 1 MiB is not the default: set glibc's own
    ``MALLOC_MMAP_THRESHOLD_=1048576`` (or a ``glibc.malloc.mmap_threshold``
    tunable) to choose it, which this leaves alone. Values are unchanged.
    Process-wide and sticky: called where a process starts a unit.
    """
    import os

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user chose a threshold for glibc: theirs stands
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_bytes)))


def release_memory() -> bool:
    """Give the free pages of the heap back to the OS (glibc's ``malloc_trim``); whether any were.

    Small blocks stay in the heap under :func:`bound_heap`; call this when a
    phase that freed many of them ends (a training loop, a scoring pass).
    """
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
