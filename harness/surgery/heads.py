"""Head surgery: gating, masking and physical removal of attention heads.

transformers 5 removed ``head_mask`` and ``prune_heads``, so the harness does both
itself on one code path for every architecture in :data:`LAYOUTS`: a gate on the
input of each layer's attention output projection (masking, and gradients of the
loss with respect to the gates), and slicing of q/k/v rows and o columns.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from harness.surgery.common import get as _get
from harness.surgery.common import slice_linear as _slice_linear

if TYPE_CHECKING:
    import torch
    from torch import nn

KEPT_HEADS_KEY = "harness_kept_heads"


@dataclass(frozen=True)
class AttentionLayout:
    """Where one architecture keeps its attention; paths are dotted attribute names."""

    layers: str  # from the base model to the list of layers
    attention: str  # from a layer to the module owning q/k/v and the head count
    q: str
    k: str
    v: str
    o: str  # from a layer to the output projection
    heads_attr: str  # head-count attribute of the attention module
    width_attrs: tuple[str, ...] = ()  # attributes equal to heads * head_dim


_BERT = AttentionLayout(
    layers="encoder.layer",
    attention="attention.self",
    q="query",
    k="key",
    v="value",
    o="attention.output.dense",
    heads_attr="num_attention_heads",
    width_attrs=("all_head_size",),
)
LAYOUTS: dict[str, AttentionLayout] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "distilbert": AttentionLayout(
        layers="transformer.layer",
        attention="attention",
        q="q_lin",
        k="k_lin",
        v="v_lin",
        o="attention.out_lin",
        heads_attr="n_heads",
        width_attrs=("dim",),
    ),
}


def layout_of(model: nn.Module) -> AttentionLayout:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LAYOUTS:
        known = ", ".join(sorted(LAYOUTS))
        raise ValueError(f"head surgery does not know architecture {model_type!r} (known: {known})")
    return LAYOUTS[model_type]


def _layers(model: nn.Module) -> Sequence[nn.Module]:
    return _get(model.base_model, layout_of(model).layers)  # type: ignore[return-value]


@dataclass(frozen=True)
class HeadGeometry:
    """Current head counts per layer (they may differ after removal) and the fixed head size."""

    heads_per_layer: tuple[int, ...]
    head_dim: int
    kv_heads_per_layer: tuple[int, ...] = ()  # key/value heads per layer when grouped (GQA/MQA), else empty

    @property
    def num_layers(self) -> int:
        return len(self.heads_per_layer)

    @property
    def total_heads(self) -> int:
        return sum(self.heads_per_layer)


def head_geometry(model: nn.Module) -> HeadGeometry:
    layout = layout_of(model)
    heads, dims = [], set()
    for layer in _layers(model):
        attention = _get(layer, layout.attention)
        n = int(getattr(attention, layout.heads_attr))
        heads.append(n)
        if n:
            dims.add(_get(attention, layout.q).out_features // n)
    if len(dims) != 1:
        raise ValueError(f"inconsistent head sizes {sorted(dims)}")
    return HeadGeometry(tuple(heads), dims.pop())


class HeadGates:
    """Multiplies the input of every output projection, head by head, by ``gate``.

    ``gate`` is ``[L, H]`` (one gate per head) or ``[B, L, H]`` (one per example,
    which gives per-example gradients from a single backward pass), or a
    sequence of per-layer tensors when layers have different head counts.
    ``None`` means no gating.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.geometry = head_geometry(model)
        self.gate: torch.Tensor | Sequence[torch.Tensor] | None = None
        self._handles: list = []

    def _layer_gate(self, index: int) -> torch.Tensor | None:
        if self.gate is None:
            return None
        return self.gate[index] if not hasattr(self.gate, "dim") else self.gate[..., index, :]

    def _hook(self, index: int):
        heads, dim = self.geometry.heads_per_layer[index], self.geometry.head_dim

        def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
            gate = self._layer_gate(index)
            if gate is None:
                return None
            x = args[0]
            if gate.shape[-1] != heads:
                raise ValueError(f"layer {index} has {heads} heads, gate has {gate.shape[-1]}")
            split = x.reshape(*x.shape[:-1], heads, dim)
            if gate.dim() == 2:  # per example: [B, H] against [B, T..., H, d]
                gate = gate.reshape(gate.shape[0], *([1] * (x.dim() - 2)), heads)
            return (split * gate.to(x.dtype).unsqueeze(-1)).reshape(x.shape), *args[1:]

        return pre_hook

    def __enter__(self) -> HeadGates:
        layout = layout_of(self.model)
        for index, layer in enumerate(_layers(self.model)):
            out_proj = _get(layer, layout.o)
            self._handles.append(out_proj.register_forward_pre_hook(self._hook(index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def mask_heads(model: nn.Module, keep: torch.Tensor) -> Iterator[HeadGates]:
    """Zero the heads where ``keep`` is false while the context is open."""
    with HeadGates(model) as gates:
        gates.gate = keep.float()
        yield gates


def _keep_lists(keep: torch.Tensor | Sequence[Sequence[int]], geometry: HeadGeometry) -> list[list[int]]:
    if hasattr(keep, "dim"):
        if tuple(keep.shape) != (geometry.num_layers, max(geometry.heads_per_layer)):
            raise ValueError(f"keep mask has shape {tuple(keep.shape)}, model has {geometry.heads_per_layer}")
        return [[int(h) for h in row.nonzero().flatten()] for row in keep.bool()]
    lists = [sorted(int(h) for h in row) for row in keep]
    if len(lists) != geometry.num_layers:
        raise ValueError(f"{len(lists)} layers of kept heads for a model of {geometry.num_layers}")
    for index, row in enumerate(lists):
        if len(set(row)) != len(row):
            raise ValueError(f"layer {index}: kept heads {row} repeat a head")
    return lists


def remove_heads(model: nn.Module, keep: torch.Tensor | Sequence[Sequence[int]]) -> nn.Module:
    """Physically remove heads, in place: ``keep`` is a bool ``[L, H]`` mask or kept indices per layer.

    Indices refer to the model's current heads. The original indices of what is
    kept are recorded in ``config.harness_kept_heads`` so the model can be saved,
    reloaded (:func:`load_pruned`) and re-applied to its base model.
    """
    import torch

    layout, geometry = layout_of(model), head_geometry(model)
    kept = _keep_lists(keep, geometry)
    previous = getattr(model.config, KEPT_HEADS_KEY, None) or [list(range(n)) for n in geometry.heads_per_layer]
    for index, heads in enumerate(kept):  # check every layer before touching any
        n = geometry.heads_per_layer[index]
        if any(h < 0 or h >= n for h in heads):
            raise ValueError(f"layer {index} has {n} heads; cannot keep {heads}")
        if not heads:
            raise ValueError(f"cannot remove every head of layer {index}: keep at least one")
    for index, (layer, heads) in enumerate(zip(_layers(model), kept)):
        d = geometry.head_dim
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads])
        attention = _get(layer, layout.attention)
        for name in (layout.q, layout.k, layout.v):
            _slice_linear(_get(attention, name), rows, 0)
        _slice_linear(_get(layer, layout.o), rows, 1)
        setattr(attention, layout.heads_attr, len(heads))
        for attr in layout.width_attrs:
            setattr(attention, attr, len(heads) * d)
        previous[index] = [previous[index][h] for h in heads]
    setattr(model.config, KEPT_HEADS_KEY, previous)
    return model
