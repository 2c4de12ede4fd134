"""Calibration helpers: what each module's input looks like over real tokens.

Activation-aware pruning methods (Wanda, SparseGPT, head methods that weigh a
head by its output) all need the same pass: run the calibration batches,
capture the input of some modules, drop padding, reduce. Doing it once here
keeps padding, devices and train/eval mode right for every plugin. All
reductions run on the model's own device and come back as float32 CPU tensors;
they are accumulated in float32 even when the forward runs under
``torch.autocast`` with bfloat16/float16 activations (:func:`full_precision`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from harness.devices import device_of as model_device  # noqa: F401 - plugins' name for it
from harness.devices import full_precision

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.records import Batch

Visit = Callable[[str, "torch.Tensor"], None]


def input_axis(module: nn.Module) -> int:
    """The axis of ``module.weight`` that indexes inputs: 1 for ``nn.Linear`` ([out, in]), 0 for GPT-2's ``Conv1D``.

    A per-input statistic ``v`` broadcasts against the weight as ``v.unsqueeze(1 - input_axis(module))``.
    """
    import torch

    from harness.surgery.common import _is_conv1d

    if _is_conv1d(module) and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        return 0
    if isinstance(module, torch.nn.Linear):
        return 1
    raise ValueError(f"input_axis knows torch.nn.Linear and transformers' Conv1D, not {type(module).__name__}")


@contextmanager
def calibrating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and inference mode for a calibration pass; every module's own train/eval flag is restored."""
    import torch

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _real_tokens(x: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    """``x`` as ``[tokens, features]`` without padding (``mask``: ``[B, T]``, 1 = real token; ``None``: all real)."""
    flat = x.reshape(-1, x.shape[-1])
    if mask is None:
        return flat
    if x.shape[:-1].numel() != mask.numel():
        raise RuntimeError(f"the input of {name} has shape {tuple(x.shape)}, which does not line up with the "
                           f"attention mask {tuple(mask.shape)}")
    return flat[mask.reshape(-1).bool()]


def visit_inputs(model: nn.Module, batches: Iterable[Batch], names: Sequence[str], visit: Visit) -> None:
    """Run every batch and call ``visit(name, x)`` with the input of each named module.

    ``x`` is ``[real tokens, in_features]`` on the module's device, in its dtype,
    padding (``attention_mask == 0``) removed. Batches are moved to the model's
    device and reduced to :func:`harness.modeling.model_inputs` (no ``labels``);
    the model runs in eval and inference mode, and its modes and hooks are
    restored afterwards even when ``visit`` raises.
    """
    from harness.modeling import model_inputs

    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"the model has no modules named {', '.join(unknown)}")
    device, current, seen, handles = model_device(model), {"mask": None}, set(), []

    def hook_for(name: str) -> Callable:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.add(name)
            visit(name, _real_tokens(args[0] if args else next(iter(kwargs.values())), current["mask"], name))

        return pre_hook

    batches_run = 0
    try:
        for name in dict.fromkeys(names):
            handles.append(modules[name].register_forward_pre_hook(hook_for(name), with_kwargs=True))
        with calibrating(model):
            for batch in batches:
                inputs = {key: value.to(device) for key, value in model_inputs(batch).items()}
                current["mask"] = inputs.get("attention_mask")
                model(**inputs)
                batches_run += 1
    finally:
        for handle in handles:
            handle.remove()
    if not batches_run:
        raise ValueError("calibration needs at least one batch")
    unused = [name for name in names if name not in seen]
    if unused:
        raise ValueError(f"modules {', '.join(unused)} received no input in the calibration forward passes")


def _cpu(t: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy that is a normal tensor (not an inference tensor), safe for autograd and in-place use."""
    import torch

    t = t.to("cpu", torch.float32)
    return t.clone() if t.is_inference() else t


@dataclass(frozen=True, eq=False)
class InputStats:
    """Statistics of one module's input X (``[tokens, in]``, padding excluded) over the calibration set."""

    sum_squares: torch.Tensor  # [in]: Σ_t X_tj²
    tokens: int  # real tokens seen
    gram: torch.Tensor | None = None  # [in, in]: XᵀX (SparseGPT's Hessian is 2·XᵀX/tokens); None unless asked

    def norms(self) -> torch.Tensor:
        """‖X_j‖₂ over tokens, ``[in]``: Wanda's activation norm."""
        return self.sum_squares.sqrt()


class _Sums:
    """Running per-module sums of X² (and XᵀX) and token counts, in float32 on the inputs' device."""

    def __init__(self, names: Sequence[str], gram: bool) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.grams: dict[str, torch.Tensor] = {}
        self.tokens = dict.fromkeys(names, 0)
        self.gram = gram

    def add(self, name: str, x: torch.Tensor) -> None:
        with full_precision(x.device):  # bf16/fp16 activations under autocast: sums and XᵀX still in float32
            x = x.float()
            squares = x.square().sum(0)
            self.sums[name] = self.sums[name] + squares if name in self.sums else squares
            self.tokens[name] += x.shape[0]
            if self.gram:
                product = x.T @ x
                self.grams[name] = self.grams[name] + product if name in self.grams else product

    def stats(self) -> dict[str, InputStats]:
        return {name: InputStats(_cpu(self.sums[name]), count, _cpu(self.grams[name]) if self.gram else None)
                for name, count in self.tokens.items()}


def input_statistics(model: nn.Module, batches: Iterable[Batch], names: Sequence[str],
                     gram: bool = False) -> dict[str, InputStats]:
    """Per named module: the per-input-feature sum of squares, the token count and, with ``gram``, XᵀX.

    Accumulated in float32 on the model's device (see :func:`visit_inputs`),
    returned on the CPU.
    """
    sums = _Sums(names, gram)
    visit_inputs(model, batches, names, sums.add)
    return sums.stats()


def output_projections(model: nn.Module) -> tuple[str, ...]:
    """Dotted names of each layer's attention output projection, layer by layer (from the surgery layouts)."""
    from harness import surgery

    return surgery.target_modules(model, ("o",))


def visit_head_contexts(model: nn.Module, batches: Iterable[Batch],
                        visit: Callable[[int, torch.Tensor], None]) -> None:
    """Call ``visit(layer, context)`` with each layer's per-head context vectors, ``[tokens, heads, head_dim]``.

    The context of a head is its slice of the output projection's input (the
    attention-weighted values, before mixing heads), padding excluded. Grouped
    attention (GQA/MQA): one context per query head.
    """
    from harness import surgery

    geometry = surgery.head_geometry(model)
    layers = {name: index for index, name in enumerate(output_projections(model))}

    def split(name: str, x: torch.Tensor) -> None:
        index = layers[name]
        visit(index, x.reshape(x.shape[0], geometry.heads_per_layer[index], geometry.head_dim))

    visit_inputs(model, batches, tuple(layers), split)


@dataclass(frozen=True, eq=False)
class HeadContexts:
    """One layer's head contexts C (``[tokens, heads, head_dim]``, padding excluded) reduced over tokens."""

    sum_squares: torch.Tensor  # [heads, head_dim]: Σ_t C_thd²
    tokens: int

    def squared_norms(self) -> torch.Tensor:
        """Σ_t ‖C_th‖², ``[heads]``: how much each head writes, summed over tokens."""
        return self.sum_squares.sum(-1)

    def norms(self) -> torch.Tensor:
        """‖C_h‖ over tokens and head dimensions (Frobenius), ``[heads]``."""
        return self.squared_norms().sqrt()


def head_contexts(model: nn.Module, batches: Iterable[Batch]) -> list[HeadContexts]:
    """Per layer, the per-head sums of squared context norms and the token count (float32, CPU).

    The per-feature statistics of the output projection's input, laid out head by head.
    """
    from harness import surgery

    geometry = surgery.head_geometry(model)
    names = output_projections(model)
    stats = input_statistics(model, batches, names)
    return [
        HeadContexts(stats[name].sum_squares.view(heads, geometry.head_dim), stats[name].tokens)
        for name, heads in zip(names, geometry.heads_per_layer)
    ]


Update = Callable[[dict[str, InputStats]], None]


def block_of(name: str) -> str:
    """The numbered block holding a module: its dotted name up to its first all-digit part (``model.layers.3``)."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: index + 1])
    raise ValueError(f"module {name!r} is in no numbered block (its name has no all-digit part)")


def blocks(names: Sequence[str]) -> dict[str, list[str]]:
    """The named modules grouped by block, blocks in model order (the index inside their list)."""
    found: dict[str, list[str]] = {}
    for name in names:
        found.setdefault(block_of(name), []).append(name)
    return dict(sorted(found.items(), key=lambda item: (item[0].rpartition(".")[0], int(item[0].rpartition(".")[2]))))


def sequential_statistics(model: nn.Module, batches: Sequence[Batch], names: Sequence[str], update: Update,
                          gram: bool = True) -> None:
    """Block by block, bottom up: statistics of one block's named inputs, ``update(stats)``, then the next block.

    What SparseGPT calls sequential calibration: the inputs of block l are the
    outputs of blocks 0..l-1 *as ``update`` left them* (pruned, reconstructed),
    so each block is fitted to what it will really receive. The inputs of the
    first block are captured once from the model's own forward pass (embeddings,
    masks, rotary angles); every later block is run on its own with the same
    keyword arguments. All numbered blocks of the list run, with or without
    named modules. ``update`` runs outside inference mode: it may change weights.
    """
    import torch

    groups = blocks(names)
    modules = dict(model.named_modules())
    prefix = next(iter(groups)).rpartition(".")[0]
    if any(block.rpartition(".")[0] != prefix for block in groups):
        raise ValueError("sequential calibration needs every named module in one list of blocks")
    captured = _first_block_inputs(model, batches, modules[f"{prefix}.0"])
    for index, block in enumerate(modules[prefix].children()):
        members = groups.get(f"{prefix}.{index}", [])
        if members:
            update(_block_statistics(block, members, modules, captured, gram))
        with calibrating(model), torch.no_grad():
            captured = [(_hidden(block(hidden, *rest, **kwargs)), rest, kwargs, mask)
                        for hidden, rest, kwargs, mask in captured]


class _Captured(Exception):
    """Raised by the first block's hook: everything the model computes after that point is not needed."""


Captured = list[tuple[Any, tuple, dict, Any]]  # hidden states, other positional and keyword arguments, padding mask


def _first_block_inputs(model: nn.Module, batches: Sequence[Batch], first: nn.Module) -> Captured:
    """Per batch: the first block's hidden states, its other arguments and the padding mask."""
    from harness.modeling import model_inputs

    device, captured = model_device(model), []

    def catch(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        captured.append((hidden, rest, dict(kwargs), current["mask"]))
        raise _Captured

    current: dict = {"mask": None}
    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    use_cache = getattr(model.config, "use_cache", None)
    try:
        if use_cache is not None:
            model.config.use_cache = False  # a cache object would grow each time a block is re-run
        with calibrating(model):
            for batch in batches:
                inputs = {key: value.to(device) for key, value in model_inputs(batch).items()}
                current["mask"] = inputs.get("attention_mask")
                try:
                    model(**inputs)
                except _Captured:
                    pass
    finally:
        handle.remove()
        if use_cache is not None:
            model.config.use_cache = use_cache
    if not captured:
        raise ValueError("calibration needs at least one batch")
    return captured


def _block_statistics(block: nn.Module, members: list[str], modules: dict, captured: Captured,
                      gram: bool) -> dict[str, InputStats]:
    """Input statistics of ``members`` from running ``block`` alone on each captured input."""
    import torch

    current: dict = {"mask": None}
    sums = _Sums(members, gram)

    def hook_for(name: str) -> Callable:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            sums.add(name, _real_tokens(args[0] if args else next(iter(kwargs.values())), current["mask"], name))

        return pre_hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name), with_kwargs=True) for name in members]
    try:
        with calibrating(block), torch.no_grad():
            for hidden, rest, kwargs, mask in captured:
                current["mask"] = mask
                block(hidden, *rest, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return sums.stats()


def _hidden(output: Any) -> torch.Tensor:
    """A block's hidden states: the tensor itself, or the first item of the tuple older blocks return."""
    return output[0] if isinstance(output, (tuple, list)) else output
