"""Weight masks: which linear layers may be pruned, and masks made permanent with ``torch.nn.utils.prune``.

Pruners compute boolean masks; this module applies them through
``prune.custom_from_mask`` and immediately ``prune.remove``, so no
``*_orig``/``*_mask`` tensors are left and a saved model reloads as a plain one.
Embeddings, the pooler and the classifier are never targets.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Mapping

from harness.surgery.common import get
from harness.surgery.heads import _layers, layout_of
from harness.surgery.neurons import ffn_layout_of

if TYPE_CHECKING:
    import torch
    from torch import nn

GROUPS = ("q", "k", "v", "o", "ffn_in", "ffn_out")
ALIASES: dict[str, tuple[str, ...]] = {
    "attention": ("q", "k", "v", "o"),
    "qkv": ("q", "k", "v"),
    "ffn": ("ffn_in", "ffn_out"),
    "linear": GROUPS,
}


def parse_groups(spec: str) -> tuple[str, ...]:
    """``"attention,ffn_in"`` -> the weight groups it names, in canonical order; unknown names raise."""
    chosen: set[str] = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part not in GROUPS and part not in ALIASES:
            known = ", ".join([*ALIASES, *GROUPS])
            raise ValueError(f"unknown weight group {part!r} (known: {known})")
        chosen.update(ALIASES.get(part, (part,)))
    if not chosen:
        raise ValueError("name at least one weight group")
    return tuple(g for g in GROUPS if g in chosen)


def _group_paths(model: nn.Module, group: str) -> list[str]:
    """Paths from a layer to the modules of one group."""
    attention, ffn = layout_of(model), ffn_layout_of(model)
    if group in ("q", "k", "v"):
        return [f"{attention.attention}.{getattr(attention, group)}"]
    if group == "o":
        return [attention.o]
    return list(ffn.up) if group == "ffn_in" else [ffn.down]


def target_modules(model: nn.Module, spec: str | tuple[str, ...] = "linear") -> tuple[str, ...]:
    """Dotted names (from the model root) of every module in the named groups, layer by layer."""
    groups = parse_groups(spec) if isinstance(spec, str) else spec
    names = {id(module): name for name, module in model.named_modules()}
    found: list[str] = []
    for layer in _layers(model):
        for group in groups:
            for path in _group_paths(model, group):
                name = names[id(get(layer, path))]
                if name not in found:
                    found.append(name)
    return tuple(found)


def _masked_modules(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Module]:
    """The module behind every mask, after checking all of them (nothing is touched on a bad one)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules or not hasattr(modules[name], "weight"):
            raise ValueError(f"no module {name!r} with a weight to mask")
        if tuple(mask.shape) != tuple(modules[name].weight.shape):
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight {tuple(modules[name].weight.shape)}")
    return {name: modules[name] for name in masks}


def apply_weight_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero weights where a mask is false, permanently; in place.

    Uses ``custom_from_mask`` then ``remove``: the parametrisation torch builds
    is collapsed at once, leaving a plain ``weight`` parameter with zeros in it.
    """
    from torch.nn.utils import prune

    for name, module in _masked_modules(model, masks).items():
        prune.custom_from_mask(module, "weight", masks[name].to(module.weight.device, module.weight.dtype))
        prune.remove(module, "weight")
    return model


@contextmanager
def hold_weight_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Keep pruned weights at zero through training: re-mask after every optimizer step.

    Training a masked model without this moves the zeros, and masking only at the
    end throws away what the kept weights learned to compensate for them. A hook
    on every ``Optimizer.step`` (not a reparametrisation) leaves the modules as
    they are, so it works with any optimizer and with adapters that wrap or
    merge into the weights (PEFT); a frozen weight is simply never moved.
    """
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    held = [(module.weight, masks[name].to(module.weight.device, torch.bool))
            for name, module in _masked_modules(model, masks).items()]

    def remask(*_: object) -> None:
        with torch.no_grad():
            for weight, mask in held:
                weight.masked_fill_(~mask, 0)

    remask()
    handle = register_optimizer_step_post_hook(remask)
    try:
        yield
    finally:
        handle.remove()


def count_nonzero(model: nn.Module, names: tuple[str, ...]) -> tuple[int, int]:
    """Nonzero entries and total entries of the named modules' weights (what sparsity is measured on).

    A name the model no longer has (its block was removed, and the blocks after it
    renumbered) counts as removed: no nonzero entries, and nothing in the total.
    """
    modules = dict(model.named_modules())
    nonzero = total = 0
    for name in names:
        if name not in modules:
            continue
        weight = modules[name].weight
        nonzero += int(weight.count_nonzero())
        total += weight.numel()
    return nonzero, total


def module_groups(model: nn.Module) -> dict[str, str]:
    """Every prunable linear module's dotted name and its group (``"q"``, ..., ``"ffn_out"``)."""
    return {name: group for group in GROUPS for name in target_modules(model, (group,))}
