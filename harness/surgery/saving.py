"""Saving and reloading pruned models: the dense architecture is rebuilt, the same units removed, then weights load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from harness.surgery.heads import KEPT_HEADS_KEY, remove_heads

if TYPE_CHECKING:
    import torch
    from torch import nn


def save_pruned(model: nn.Module, directory: str | Path, base_model: str | None = None) -> Path:
    """Save weights and config, plus ``head_mask.json`` (base model id and kept-head mask)."""
    directory = Path(directory)
    model.save_pretrained(directory)
    kept = getattr(model.config, KEPT_HEADS_KEY, None)
    if kept is not None:
        total = getattr(model.config, "num_attention_heads", None) or model.config.n_heads
        mask = [[h in set(row) for h in range(total)] for row in kept]
        record = {"base_model": base_model, "kept_heads": kept, "head_mask": mask}
        (directory / "head_mask.json").write_text(json.dumps(record, indent=1))
    return directory


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
    model = (auto_class or AutoModelForSequenceClassification).from_config(config)
    if kept is not None:
        remove_heads(model, kept)
    missing, unexpected = model.load_state_dict(_read_state_dict(directory), strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{directory}: missing weights {missing[:3]}, unexpected {unexpected[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
