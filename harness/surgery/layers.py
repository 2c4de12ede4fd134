"""Layer surgery: gating, masking and physical removal of whole transformer blocks.

Dropping a block leaves the residual stream to flow past it, so a masked block
returns its input hidden states unchanged; removing it builds a shorter
``nn.ModuleList``. Both act on the block list the head layouts already locate
(:data:`harness.surgery.heads.LAYOUTS`: ``encoder.layer`` of BERT-style
encoders, GPT-2's ``h``, ``layers`` of LLaMA/Qwen2/Mistral decoders), so every
architecture head surgery knows, layers surgery knows too. Removal keeps the
config (layer count, per-layer lists) and the attention modules' ``layer_idx``
(their KV-cache slot) in step, so a pruned model saves, reloads and generates.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from harness.surgery.common import get
from harness.surgery.heads import KEPT_HEADS_KEY, KEPT_KV_HEADS_KEY, layout_of
from harness.surgery.neurons import KEPT_NEURONS_KEY

if TYPE_CHECKING:
    import torch
    from torch import nn

KEPT_LAYERS_KEY = "harness_kept_layers"
# Config attributes holding one entry per block: sliced with the blocks (``layer_types``: transformers 5's
# per-layer attention kinds, read by the model's forward and by ``DynamicCache(config=...)``).
PER_LAYER_KEYS = ("layer_types", KEPT_HEADS_KEY, KEPT_KV_HEADS_KEY, KEPT_NEURONS_KEY, KEPT_LAYERS_KEY)


def _owner(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the block list and the attribute it is stored under."""
    parent, _, attr = layout_of(model).layers.rpartition(".")
    return (get(model.base_model, parent) if parent else model.base_model), attr  # type: ignore[return-value]


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks, in order."""
    owner, attr = _owner(model)
    return getattr(owner, attr)


def num_layers(model: nn.Module) -> int:
    return len(layer_list(model))


def layer_names(model: nn.Module) -> tuple[str, ...]:
    """Dotted names (from the model root) of the blocks, in order."""
    names = {id(module): name for name, module in model.named_modules()}
    return tuple(names[id(block)] for block in layer_list(model))


def _kept(keep: torch.Tensor | Sequence[bool], count: int) -> list[int]:
    """Indices of the kept blocks from a bool ``[L]`` mask; at least one block must stay."""
    import torch

    mask = torch.as_tensor(keep).bool()
    if tuple(mask.shape) != (count,):
        raise ValueError(f"keep mask has shape {tuple(mask.shape)}, the model has {count} layers")
    kept = [int(i) for i in mask.nonzero().flatten()]
    if not kept:
        raise ValueError("cannot remove every layer: keep at least one")
    return kept


def _renumber(blocks: Sequence[nn.Module]) -> None:
    """Give each module with a ``layer_idx`` (attention: its KV-cache slot) its block's new position."""
    for index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index


def _update_config(config: Any, kept: list[int], count: int) -> None:
    """New layer count, per-layer lists sliced to the kept blocks, original indices recorded."""
    if getattr(config, KEPT_LAYERS_KEY, None) is None:
        setattr(config, KEPT_LAYERS_KEY, list(range(count)))
    for key in PER_LAYER_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == count:
            try:
                setattr(config, key, [values[i] for i in kept])
            except AttributeError:  # a read-only property derived from other fields
                pass
    config.num_hidden_layers = len(kept)  # n_layer / n_layers through the config's attribute_map


def remove_layers(model: nn.Module, keep: torch.Tensor | Sequence[bool]) -> nn.Module:
    """Physically remove the blocks where ``keep`` ([L], bool) is false, in place; refuses to remove all.

    The kept blocks (the same module objects) go into a new ``nn.ModuleList``;
    ``config.num_hidden_layers`` and per-layer config lists follow, and the
    original indices of the kept blocks are recorded in ``config.harness_kept_layers``.
    A GPT-2 that scales attention by its inverse layer index is refused when a
    block would move: a reload would rebuild it with the new index's scale.
    """
    import torch

    owner, attr = _owner(model)
    blocks = getattr(owner, attr)
    kept = _kept(keep, len(blocks))
    moved = kept != list(range(len(kept)))
    if moved and getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("cannot move blocks of a model that scales attention by its inverse layer index")
    setattr(owner, attr, torch.nn.ModuleList([blocks[i] for i in kept]))
    _renumber(getattr(owner, attr))
    _update_config(model.config, kept, len(blocks))
    return model


def _hidden_in(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """A block's output with its hidden states replaced (blocks return a tensor, or a tuple in older versions)."""
    return (hidden, *output[1:]) if isinstance(output, (tuple, list)) else hidden


def _hidden_out(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class BlockHooks:
    """Base of the block contexts: one forward hook on every block while the context is open."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list = []

    def _hook(self, index: int) -> Callable:
        raise NotImplementedError

    def __enter__(self):
        for index, block in enumerate(layer_list(self.model)):
            self._handles.append(block.register_forward_hook(self._hook(index), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class LayerGates(BlockHooks):
    """Scales each block's residual update by a gate: ``x + g · (block(x) − x)``.

    ``gate`` is ``[L]`` (one gate per block), ``[B, L]`` (one per example, for
    per-example gradients) or ``None`` (no gating). A gate of exactly 0 without
    gradient passes the block's input through unchanged, which is what removing
    the block gives; exactly 1 leaves the block alone.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.gate: torch.Tensor | None = None

    def _hook(self, index: int) -> Callable:
        import torch

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if self.gate is None:
                return None
            gate, x = self.gate[..., index], _hidden_in(args, kwargs)
            if not gate.requires_grad and gate.dim() == 0 and float(gate) in (0.0, 1.0):
                return None if float(gate) == 1.0 else _with_hidden(output, x)
            y = _hidden_out(output)
            gate = gate.reshape(*gate.shape, *([1] * (y.dim() - gate.dim())))
            if gate.requires_grad:  # dL/dgate sums over tokens: at least float32 even for bf16/fp16 hidden states
                dtype = torch.promote_types(x.dtype, y.dtype)
                wide = torch.promote_types(dtype, torch.float32)
                xw, yw = x.to(wide), y.to(wide)
                return _with_hidden(output, (xw + gate.to(y.device, wide) * (yw - xw)).to(dtype))
            gate = gate.to(y.device, y.dtype)  # a float32 gate would promote bf16/fp16 hidden states
            return _with_hidden(output, x + gate * (y - x))

        return hook


@contextmanager
def mask_layers(model: nn.Module, keep: torch.Tensor) -> Iterator[LayerGates]:
    """Skip the blocks where ``keep`` ([L], bool) is false while the context is open (outputs as if removed)."""
    count = num_layers(model)
    if tuple(keep.shape) != (count,):
        raise ValueError(f"keep mask has shape {tuple(keep.shape)}, the model has {count} layers")
    with LayerGates(model) as gates:
        gates.gate = keep.bool().float()
        yield gates


class BlockVisitor(BlockHooks):
    """Calls ``visit(index, input, output)`` with each block's hidden states on every forward (read only)."""

    def __init__(self, model: nn.Module, visit: Callable[[int, torch.Tensor, torch.Tensor], None]) -> None:
        super().__init__(model)
        self.visit = visit

    def _hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self.visit(index, _hidden_in(args, kwargs), _hidden_out(output))

        return hook
