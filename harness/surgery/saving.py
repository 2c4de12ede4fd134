"""Saving and reloading pruned models: the dense architecture is rebuilt, the same units removed, then weights load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from harness.surgery.heads import KEPT_HEADS_KEY, KEPT_KV_HEADS_KEY, LAYOUTS, remove_heads
from harness.surgery.neurons import KEPT_NEURONS_KEY, remove_neurons

if TYPE_CHECKING:
    import torch
    from torch import nn


def save_pruned(model: nn.Module, directory: str | Path, base_model: str | None = None) -> Path:
    """Save weights and config, plus ``head_mask.json`` (base model id and kept-head mask)."""
    directory = Path(directory)
    model.save_pretrained(directory)
    kept = getattr(model.config, KEPT_HEADS_KEY, None)
    if kept is not None:
        (directory / "head_mask.json").write_text(json.dumps(_head_record(model.config, kept, base_model), indent=1))
    return directory


def _head_record(config: object, kept: list[list[int]], base_model: str | None) -> dict:
    """Kept heads as original indices and as a dense mask; key/value heads too when attention is grouped."""
    layout = LAYOUTS[config.model_type]  # type: ignore[attr-defined]
    total = int(getattr(config, layout.config_heads))
    record = {"base_model": base_model, "kept_heads": kept, "head_mask": [[h in row for h in range(total)] for row in kept]}
    kept_kv = getattr(config, KEPT_KV_HEADS_KEY, None)
    if kept_kv is not None and layout.config_kv_heads:
        kv_total = int(getattr(config, layout.config_kv_heads) or total)
        record["kept_kv_heads"] = kept_kv
        record["kv_head_mask"] = [[h in row for h in range(kv_total)] for row in kept_kv]
    return record


def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(directory / shard))
        return state
    return load_file(directory / "model.safetensors")


def load_pruned(directory: str | Path, auto_class: type | None = None) -> nn.Module:
    """Rebuild a saved pruned model: the dense architecture, the same heads removed, then the weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    kept = getattr(config, KEPT_HEADS_KEY, None)
    if kept is not None:
        delattr(config, KEPT_HEADS_KEY)
    kept_kv = getattr(config, KEPT_KV_HEADS_KEY, None)
    if kept_kv is not None:
        delattr(config, KEPT_KV_HEADS_KEY)
    neurons = getattr(config, KEPT_NEURONS_KEY, None)
    if neurons is not None:
        delattr(config, KEPT_NEURONS_KEY)
    model = (auto_class or AutoModelForSequenceClassification).from_config(config)
    if neurons is not None:
        remove_neurons(model, neurons)
    if kept is not None:
        remove_heads(model, kept)  # key/value heads follow from the query heads kept
        if kept_kv is not None and getattr(model.config, KEPT_KV_HEADS_KEY, None) != kept_kv:
            raise ValueError(f"{directory}: kept key/value heads {kept_kv} do not follow from kept heads {kept}")
    missing, unexpected = model.load_state_dict(_read_state_dict(directory), strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{directory}: missing weights {missing[:3]}, unexpected {unexpected[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
