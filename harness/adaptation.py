"""What adapters add to a grid: spectra of their learned updates, row columns, and recovery after pruning.

Recovery trains a pruned model again with an adapter (full fine-tuning or a LoRA
variant, merged). Sparsity must survive it: a physically pruned model stays
small by construction; masked weights are held at zero after every optimizer
step (so the kept weights learn to do without them) and masked again at the
end, because merging a low-rank update makes zeros dense.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from harness import progress, surgery
from harness.records import Adapter, TaskData, TrainRequest

if TYPE_CHECKING:
    import torch
    from torch import nn

RANK_COLUMNS = ("erank_q", "erank_k", "erank_v")
# a classifier whose training loss ends above this share of the label prior's entropy learned next to nothing
NOT_LEARNED_SHARE = 0.95


def training_flags(final_loss: float | None, data: TaskData, stage: str = "training") -> tuple[str, ...]:
    """Why a training run's result should not be trusted, as row flags (none when it looks sound).

    ``<stage>-diverged``: the loss is not finite. ``<stage>-not-learned``
    (classification): the final loss is at least 95% of the entropy of the
    training labels, the loss of always predicting the class frequencies; a
    diverged LoRA run sits there while its row still looks like a result.
    ``None`` (no steps were run, or a cache entry older than the tail-mean
    loss) and single-class training labels give no verdict rather than a false one.
    """
    import math
    from collections import Counter

    if final_loss is None:
        return ()
    if not math.isfinite(final_loss):
        return (f"{stage}-diverged",)
    if data.kind != "classification" or not data.train.labels:
        return ()
    counts = Counter(data.train.labels).values()
    if len(counts) < 2:
        return ()
    total = sum(counts)
    prior = -sum(n / total * math.log(n / total) for n in counts)
    return (f"{stage}-not-learned",) if final_loss >= NOT_LEARNED_SHARE * prior else ()


def write_spectra(updates: Mapping[str, torch.Tensor], model: nn.Module, stem: Path) -> dict[str, float]:
    """Spectra CSV, per-module summary CSV and plot next to the leaderboard; median ranks per kind."""
    from harness import spectra

    kinds = surgery.module_groups(model)
    table = spectra.spectra(updates, kinds)
    summary = spectra.summary(updates, kinds)
    stem.parent.mkdir(parents=True, exist_ok=True)
    spectra.write_csv(table, stem.with_name(stem.name + "-spectra.csv"))
    spectra.write_csv(summary, stem.with_name(stem.name + "-summary.csv"))
    spectra.plot(table, stem.with_name(stem.name + "-spectra.png"))
    ranks = spectra.median_ranks(summary)
    ranks.update(spectra.median_ranks(summary, "energy90_rank", "rank90"))
    return ranks


def row_columns(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The unit adapter's columns in every row of the unit: trainable parameters, its config, q/k/v ranks."""
    ranks = meta.get("ranks", {})
    columns: dict[str, Any] = {
        "trainable_params": int(meta.get("trainable_params", 0)),
        "adapter_config": json.dumps(meta["config"], sort_keys=True) if meta.get("config") else "",
    }
    columns.update({name: round(float(ranks[name]), 4) if name in ranks else float("nan") for name in RANK_COLUMNS})
    return columns


def recover(adapter: Adapter, request: TrainRequest, held: Mapping[str, torch.Tensor],
            data: TaskData) -> tuple[nn.Module, dict[str, float], tuple[str, ...]]:
    """Train a pruned model with a recovery adapter, ``held`` weights kept at zero; its cost as extras, and flags.

    Announced as the phase ``recovery (ADAPTER)``, a step per training batch taken.
    """
    import dataclasses
    import time

    with progress.phase(f"recovery ({adapter.name})", total=request.steps) as step:
        request = dataclasses.replace(request, batches=progress.ticking(request.batches, step))
        start = time.perf_counter()
        with surgery.hold_weight_masks(request.model, held):
            result = adapter.train(request)
        seconds = time.perf_counter() - start
    recovered = result.model.eval()
    if held:  # a merged low-rank update is dense: mask once more
        surgery.apply_weight_masks(recovered, held)
    extras = {"recovery/train_s": seconds, "recovery/trainable_params": float(result.trainable_params),
              "recovery/final_loss": float(result.final_loss)}
    return recovered, extras, training_flags(trained_loss(result), data, "recovery")


def trained_loss(result: Any) -> float | None:
    """The run's tail-mean loss, or ``None`` when no step ran (``--train-steps 0``): nothing to judge."""
    return float(result.final_loss) if result.steps > 0 else None


def architecture(model: nn.Module) -> dict[str, str]:
    """What a fine-tune may change besides weights (``relufy`` swaps the FFN activation): cached beside them."""
    try:
        return {"ffn_activation": surgery.ffn_activation_name(model)}
    except ValueError:  # an architecture without a known FFN activation
        return {}


def restore_architecture(model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Make a freshly loaded model what the cached fine-tune was before its weights go in (its FFN activation)."""
    wanted = meta.get("ffn_activation")
    if wanted is not None and wanted != surgery.ffn_activation_name(model):
        surgery.set_ffn_activation(model, wanted)
