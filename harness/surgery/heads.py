"""Head surgery: gating, masking and physical removal of attention heads.

transformers 5 removed ``head_mask`` and ``prune_heads``, so the harness does both
itself on one code path for every architecture in :data:`LAYOUTS`: a gate on the
input of each layer's attention output projection (masking, and gradients of the
loss with respect to the gates), and slicing of q/k/v rows and o columns.
Encoders (BERT, RoBERTa, DistilBERT) and decoders (GPT-2's fused ``Conv1D``; LLaMA,
Qwen2 and Mistral with grouped-query attention, where key/value heads go with the
last of their query heads) share it. The head size never changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from harness.devices import device_of
from harness.surgery.common import ProjectionGates, times_gate
from harness.surgery.common import get as _get
from harness.surgery.common import out_width as _out_width
from harness.surgery.common import slice_projection as _slice

if TYPE_CHECKING:
    import torch
    from torch import nn

KEPT_HEADS_KEY = "harness_kept_heads"
KEPT_KV_HEADS_KEY = "harness_kept_kv_heads"


@dataclass(frozen=True)
class AttentionLayout:
    """Where one architecture keeps its attention; paths are dotted attribute names.

    Per-layer head counts live on the modules (HF configs hold one global count),
    so after removal the geometry is read back from projection widths and the
    attributes named here, which :func:`remove_heads` keeps up to date.
    """

    layers: str  # from the base model to the list of layers
    attention: str  # from a layer to the module owning q/k/v and the head count
    q: str
    k: str
    v: str
    o: str  # from a layer to the output projection
    heads_attr: str | None  # head-count attribute of the attention module; None: q width / head size
    width_attrs: tuple[str, ...] = ()  # attributes equal to heads * head_dim
    head_dim_attr: str | None = None  # head-size attribute, needed when ``heads_attr`` is None
    fused_qkv: bool = False  # q, k, v: consecutive equal output blocks of one projection (``q`` = ``k`` = ``v``)
    kv_groups_attr: str | None = None  # query heads per key/value head on the module (GQA/MQA); None: not grouped
    config_heads: str = "num_attention_heads"  # the config's (dense) query head count
    config_kv_heads: str | None = None  # the config's (dense) key/value head count, when grouped


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
# LLaMA-style decoders: rotary embeddings act per head on q and k, so slicing whole
# heads commutes with them; eager and sdpa both read ``num_key_value_groups``.
_LLAMA = AttentionLayout(
    layers="layers",
    attention="self_attn",
    q="q_proj",
    k="k_proj",
    v="v_proj",
    o="self_attn.o_proj",
    heads_attr=None,
    head_dim_attr="head_dim",
    kv_groups_attr="num_key_value_groups",
    config_kv_heads="num_key_value_heads",
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
        config_heads="n_heads",
    ),
    "gpt2": AttentionLayout(
        layers="h",
        attention="attn",
        q="c_attn",
        k="c_attn",
        v="c_attn",
        o="attn.c_proj",
        heads_attr="num_heads",
        width_attrs=("split_size",),  # ``embed_dim`` stays the residual width
        fused_qkv=True,
    ),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
}


def layout_of(model: nn.Module) -> AttentionLayout:
    return _layout_for(getattr(model.config, "model_type", None))


def _layout_for(model_type: str | None) -> AttentionLayout:
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


def _counts(attention: nn.Module, layout: AttentionLayout) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of one attention module, read from the module itself."""
    q_width = _out_width(_get(attention, layout.q))
    if layout.fused_qkv:
        q_width //= 3
    if layout.heads_attr is not None:
        heads = int(getattr(attention, layout.heads_attr))
        dim = q_width // heads if heads else 0
    else:
        dim = int(getattr(attention, layout.head_dim_attr))  # type: ignore[arg-type]
        heads = q_width // dim
    kv = _out_width(_get(attention, layout.k)) // dim if layout.kv_groups_attr and dim else heads
    return heads, kv, dim


def head_geometry(model: nn.Module) -> HeadGeometry:
    layout = layout_of(model)
    heads, kv_heads, dims = [], [], set()
    for layer in _layers(model):
        n, kv, dim = _counts(_get(layer, layout.attention), layout)
        heads.append(n)
        kv_heads.append(kv)
        if n:
            dims.add(dim)
    if len(dims) != 1:
        raise ValueError(f"inconsistent head sizes {sorted(dims)}")
    grouped = kv_heads != heads  # every query head with its own key/value head is not grouped
    return HeadGeometry(tuple(heads), dims.pop(), tuple(kv_heads) if grouped else ())


def kv_heads(model: nn.Module) -> tuple[int, ...]:
    """Key/value heads per layer of grouped attention (empty when not grouped, or no attention layout)."""
    try:
        return head_geometry(model).kv_heads_per_layer
    except ValueError:
        return ()


def config_geometry(config: object) -> HeadGeometry:
    """The geometry a config describes, without building the model (for checks before any work).

    A config saved by :func:`save_pruned` describes the pruned model.
    """
    layout = _layout_for(getattr(config, "model_type", None))
    layers, heads = int(config.num_hidden_layers), int(getattr(config, layout.config_heads))
    kv = int(getattr(config, layout.config_kv_heads) or heads) if layout.config_kv_heads else heads
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kept = getattr(config, KEPT_HEADS_KEY, None)
    kept_kv = getattr(config, KEPT_KV_HEADS_KEY, None)
    per_layer = tuple(len(row) for row in kept) if kept else (heads,) * layers
    kv_per_layer = tuple(len(row) for row in kept_kv) if kept_kv else (kv,) * layers
    if not kept_kv and kept and kv == heads:
        kv_per_layer = per_layer
    return HeadGeometry(per_layer, dim, kv_per_layer if kv_per_layer != per_layer else ())


class HeadGates(ProjectionGates):
    """Multiplies the input of every output projection, head by head, by ``gate``.

    ``gate`` is ``[L, H]`` (one gate per head) or ``[B, L, H]`` (one per example,
    which gives per-example gradients from a single backward pass), or a
    sequence of per-layer tensors when layers have different head counts.
    ``None`` means no gating.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.geometry = head_geometry(model)
        self.gate: torch.Tensor | Sequence[torch.Tensor] | None = None

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
            return times_gate(split, gate.unsqueeze(-1)).reshape(x.shape), *args[1:]

        return pre_hook

    def _modules(self) -> list[nn.Module]:
        layout = layout_of(self.model)
        return [_get(layer, layout.o) for layer in _layers(self.model)]  # type: ignore[misc]


@contextmanager
def mask_heads(model: nn.Module, keep: torch.Tensor) -> Iterator[HeadGates]:
    """Zero the heads where ``keep`` is false while the context is open."""
    with HeadGates(model) as gates:
        gates.gate = keep.float().to(device_of(model))  # moved once, not on every forward
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


def _kept_groups(index: int, heads: list[int], n: int, kv: int) -> list[int]:
    """The key/value heads that keep query heads; each must keep the same number of them."""
    if any(h < 0 or h >= n for h in heads):
        raise ValueError(f"layer {index} has {n} heads; cannot keep {heads}")
    if not heads:
        raise ValueError(f"cannot remove every head of layer {index}: keep at least one")
    size = n // kv
    counts = [sum(1 for h in heads if h // size == group) for group in range(kv)]
    groups = [group for group, c in enumerate(counts) if c]
    if len({counts[g] for g in groups}) > 1:
        raise ValueError(
            f"layer {index}: kept query heads {heads} leave {counts} per key/value group of {size}; "
            "every key/value head that stays needs the same number of query heads (a group may go entirely)"
        )
    return groups


def _rows(units: list[int], dim: int) -> torch.Tensor:
    import torch

    return torch.cat([torch.arange(u * dim, (u + 1) * dim) for u in units])


def _slice_layer(layer: nn.Module, layout: AttentionLayout, heads: list[int], groups: list[int], n: int) -> None:
    """Slice one layer's q/k/v outputs and o inputs to the kept heads, and update its head attributes."""
    import torch

    attention = _get(layer, layout.attention)
    _, kv, dim = _counts(attention, layout)
    q_rows, kv_rows = _rows(heads, dim), _rows(groups, dim)
    if layout.fused_qkv:  # blocks [q | k | v] of widths n, kv, kv heads
        index = torch.cat([q_rows, kv_rows + n * dim, kv_rows + (n + kv) * dim])
        _slice(_get(attention, layout.q), index, "out")
    else:
        _slice(_get(attention, layout.q), q_rows, "out")
        for name in (layout.k, layout.v):
            _slice(_get(attention, name), kv_rows, "out")
    _slice(_get(layer, layout.o), q_rows, "in")
    if layout.heads_attr is not None:
        setattr(attention, layout.heads_attr, len(heads))
    for attr in layout.width_attrs:
        setattr(attention, attr, len(heads) * dim)
    if layout.kv_groups_attr is not None:
        setattr(attention, layout.kv_groups_attr, len(heads) // len(groups))


def remove_heads(model: nn.Module, keep: torch.Tensor | Sequence[Sequence[int]]) -> nn.Module:
    """Physically remove heads, in place: ``keep`` is a bool ``[L, H]`` mask or kept indices per layer.

    Indices refer to the model's current (query) heads. With grouped attention a
    key/value head goes when all of its query heads go, and the key/value heads
    that stay must keep equal numbers of query heads (the model repeats each one
    that many times); a mask that breaks this is refused before any weight moves.
    The original indices of what is kept are recorded in ``config.harness_kept_heads``
    (and ``harness_kept_kv_heads`` for grouped layouts) so the model can be saved,
    reloaded (:func:`load_pruned`) and re-applied to its base model.
    """
    layout, geometry = layout_of(model), head_geometry(model)
    kept = _keep_lists(keep, geometry)
    kv_heads = geometry.kv_heads_per_layer or geometry.heads_per_layer
    groups = [_kept_groups(i, row, n, kv) for i, (row, n, kv) in enumerate(zip(kept, geometry.heads_per_layer, kv_heads))]
    previous = getattr(model.config, KEPT_HEADS_KEY, None) or [list(range(n)) for n in geometry.heads_per_layer]
    previous_kv = getattr(model.config, KEPT_KV_HEADS_KEY, None) or [list(range(kv)) for kv in kv_heads]
    for index, layer in enumerate(_layers(model)):
        _slice_layer(layer, layout, kept[index], groups[index], geometry.heads_per_layer[index])
        previous[index] = [previous[index][h] for h in kept[index]]
        previous_kv[index] = [previous_kv[index][g] for g in groups[index]]
    setattr(model.config, KEPT_HEADS_KEY, previous)
    if layout.kv_groups_attr is not None:
        setattr(model.config, KEPT_KV_HEADS_KEY, previous_kv)
    return model
