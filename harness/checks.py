"""What the harness checks of a plugin's output before using it: score shapes and values, mask shapes.

A plugin's mistake becomes an error row naming the plugin, never a silently
wrong leaderboard number or a crash deep inside surgery.
"""

from __future__ import annotations

from typing import Any

from harness.records import Pruner, Scorer


def checked_scores(scorer: Scorer, values: Any, expected: Any) -> Any:
    """Scores as float CPU tensors, after checking shapes against the model and that they can be ranked.

    NaN ranks nowhere; per-module scores must also be finite (global and LAMP
    rankings compare them across modules). A single score tensor may use ±inf
    to pin a unit.
    """
    if isinstance(expected, dict):
        if not isinstance(values, dict) or set(values) != set(expected):
            raise ValueError(f"scorer {scorer.name!r} must return a tensor for each of the {len(expected)} target modules")
        for name, shape in expected.items():
            if tuple(values[name].shape) != tuple(shape):
                raise ValueError(f"scorer {scorer.name!r}: {name} scores have shape {tuple(values[name].shape)}")
            if not bool(values[name].isfinite().all()):
                raise ValueError(f"scorer {scorer.name!r}: {name} scores are not all finite")
        return {name: values[name].detach().float().cpu() for name in expected}
    if tuple(getattr(values, "shape", ())) != tuple(expected):
        shape = tuple(getattr(values, "shape", ()))
        raise ValueError(f"scorer {scorer.name!r} returned shape {shape}, expected {tuple(expected)}")
    if bool(values.isnan().any()):
        raise ValueError(f"scorer {scorer.name!r} returned NaN scores")
    return values.detach().float().cpu()


def checked_mask(pruner: Pruner, keep: Any, scores: Any) -> Any:
    """A pruner's keep-mask in the scores' form: one mask per scored module, or one tensor; same shapes."""
    if isinstance(scores, dict):
        if not isinstance(keep, dict) or set(keep) != set(scores):
            raise ValueError(f"pruner {pruner.name!r} must return a mask for each scored module")
        for name, mask in keep.items():
            if tuple(mask.shape) != tuple(scores[name].shape):
                raise ValueError(f"pruner {pruner.name!r} returned a mask of shape {tuple(mask.shape)} for {name}")
        return {name: mask.bool() for name, mask in keep.items()}
    if tuple(getattr(keep, "shape", ())) != tuple(scores.shape):
        raise ValueError(f"pruner {pruner.name!r} returned a mask of shape {tuple(getattr(keep, 'shape', ()))}")
    return keep.bool()


def zero_scores(expected: Any) -> Any:
    """Zeros of the expected shapes as stride-0 views: a score-free pruner reads only shapes, and full tensors
    would cost a float per weight (the size of the model again for weight pruning)."""
    import torch

    if isinstance(expected, dict):
        return {name: torch.zeros(()).expand(tuple(shape)) for name, shape in expected.items()}
    return torch.zeros(()).expand(tuple(expected))
