"""What a row measures besides quality: latency and theoretical FLOPs.

Latency is measured, never derived: the same fixed input (batch x tokens) is run
on every model of a grid so speedups compare like with like, and a pruned model
is timed in alternation with the dense one.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def latency_input(model: nn.Module, batch_size: int = 32, tokens: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed full-length batch of real token ids (no padding), the same for every model."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(min(1000, vocab - 1), vocab, (batch_size, tokens), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _time_ms(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    start = time.perf_counter()
    model(**inputs)
    return (time.perf_counter() - start) * 1000


def measure_latency_ms(model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of one inference forward pass, in milliseconds."""
    return compare_latency_ms([model], inputs, repeats, warmup)[0]


def compare_latency_ms(
    models: list[nn.Module], inputs: dict[str, torch.Tensor], repeats: int = 7, warmup: int = 2
) -> list[float]:
    """Median forward time of each model, run in alternation so load changes hit all alike."""
    import torch

    for model in models:
        model.eval()
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for index, model in enumerate(models):
                elapsed = _time_ms(model, inputs)
                if i >= warmup:
                    times[index].append(elapsed)
    return [statistics.median(t) for t in times]


def dense_and_pruned_ms(dense: nn.Module, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Latency (ms) of the dense model and of ``model`` (timed in alternation), as the progress phase ``latency
    timing``: one step, announced when done, so no progress hook runs inside the timed passes."""
    from harness import progress

    with progress.phase("latency timing", total=1) as step:
        if model is dense:
            reference = latency = measure_latency_ms(model, inputs)
        else:
            reference, latency = compare_latency_ms([dense, model], inputs)
        step()
    return reference, latency


def forward_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """Theoretical FLOPs of one forward pass: every linear layer plus attention's two matmuls.

    Linear layers are counted by hooks on the real modules (so sliced layers count
    as sliced) at 2 FLOPs per nonzero weight and output position, so zeros from
    unstructured pruning count as skipped, which dense kernels do not do: this is
    the ideal, never a measured speed. Attention adds 2 x 2·T²·d per head.
    """
    import torch

    from harness import surgery

    total = 0

    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed linear layer

    def count(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        width = getattr(module, "out_features", None) or module.nf
        total += 2 * int(module.weight.count_nonzero()) * (output.numel() // max(width, 1))

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    try:
        with torch.inference_mode():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    batch, tokens = inputs["input_ids"].shape
    geometry = surgery.head_geometry(model)
    return total + 4 * batch * tokens * tokens * geometry.head_dim * geometry.total_heads


def weights_changed(before: nn.Module, after: nn.Module) -> bool:
    """Whether a pruner changed any weight it kept (SparseGPT's reconstruction), not only zeroed some: measured,
    so a pruner that needs its own copy for another reason (``teal`` installs run-time thresholds) says False."""
    import torch

    old = dict(before.named_parameters())
    with torch.no_grad():
        for name, value in after.named_parameters():
            base = old.get(name)
            if base is not None and base.shape == value.shape and bool(((base != value) & (value != 0)).any()):
                return True
    return False
