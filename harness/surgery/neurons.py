"""FFN neuron surgery: gating, masking and physical removal of intermediate units.

A neuron is one unit of the FFN's hidden layer: a row of each "up" projection
(``intermediate.dense``; ``gate_proj`` and ``up_proj`` in LLaMA-style MLPs) and a
column of the "down" projection. Removing it slices both, so the model really
gets smaller; gating it (a pre-hook on the down projection's input) is the
masked equivalent and gives gradients with respect to each neuron.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from harness.devices import device_of
from harness.surgery.common import ProjectionGates, get, in_width, slice_projection, times_gate, weight_axis
from harness.surgery.heads import layout_of

if TYPE_CHECKING:
    import torch
    from torch import nn

KEPT_NEURONS_KEY = "harness_kept_neurons"


@dataclass(frozen=True)
class FfnLayout:
    """Where one architecture keeps its FFN, as dotted paths from a layer."""

    up: tuple[str, ...]  # linears whose output rows are the neurons
    down: str  # the linear whose input columns are the neurons
    width_attr: str | None = None  # "module.attr" holding the width, when the module keeps one


_BERT_FFN = FfnLayout(up=("intermediate.dense",), down="output.dense")
_LLAMA_FFN = FfnLayout(up=("mlp.gate_proj", "mlp.up_proj"), down="mlp.down_proj", width_attr="mlp.intermediate_size")
FFN_LAYOUTS: dict[str, FfnLayout] = {
    "bert": _BERT_FFN,
    "roberta": _BERT_FFN,
    "xlm-roberta": _BERT_FFN,
    "distilbert": FfnLayout(up=("ffn.lin1",), down="ffn.lin2"),
    "gpt2": FfnLayout(up=("mlp.c_fc",), down="mlp.c_proj"),  # Conv1D: weights stored [in, out]
    "llama": _LLAMA_FFN,
    "qwen2": _LLAMA_FFN,
    "mistral": _LLAMA_FFN,
}


def ffn_layout_of(model: nn.Module) -> FfnLayout:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FFN_LAYOUTS:
        known = ", ".join(sorted(FFN_LAYOUTS))
        raise ValueError(f"neuron surgery does not know architecture {model_type!r} (known: {known})")
    return FFN_LAYOUTS[model_type]


def ffn_layers(model: nn.Module) -> Sequence[nn.Module]:
    return get(model.base_model, layout_of(model).layers)  # type: ignore[return-value]


def ffn_widths(model: nn.Module) -> tuple[int, ...]:
    """Current number of neurons per layer (layers may differ after removal)."""
    layout = ffn_layout_of(model)
    return tuple(in_width(get(layer, layout.down)) for layer in ffn_layers(model))


def ffn_module_names(model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
    """Per layer: the dotted names (from the model root) of its up projections and its down projection."""
    names = {id(module): name for name, module in model.named_modules()}
    layout = ffn_layout_of(model)
    return [
        (tuple(names[id(get(layer, up))] for up in layout.up), names[id(get(layer, layout.down))])
        for layer in ffn_layers(model)
    ]


class NeuronGates(ProjectionGates):
    """Multiplies the down projection's input, neuron by neuron, by ``gate``.

    ``gate`` is a sequence of per-layer tensors, each ``[I]`` (one gate per
    neuron) or ``[B, I]`` (one per example); ``None`` means no gating.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.gate: Sequence[torch.Tensor] | None = None

    def _hook(self, index: int):

        def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
            if self.gate is None:
                return None
            x, gate = args[0], self.gate[index]
            if gate.shape[-1] != x.shape[-1]:
                raise ValueError(f"layer {index} has {x.shape[-1]} neurons, gate has {gate.shape[-1]}")
            if gate.dim() == 2:  # per example: [B, I] against [B, T..., I]
                gate = gate.reshape(gate.shape[0], *([1] * (x.dim() - 2)), gate.shape[-1])
            return times_gate(x, gate), *args[1:]

        return pre_hook

    def _modules(self) -> list[nn.Module]:
        layout = ffn_layout_of(self.model)
        return [get(layer, layout.down) for layer in ffn_layers(self.model)]  # type: ignore[misc]


@contextmanager
def mask_neurons(model: nn.Module, keep: torch.Tensor) -> Iterator[NeuronGates]:
    """Zero the neurons where ``keep`` ([L, I], bool) is false while the context is open."""
    widths = ffn_widths(model)
    with NeuronGates(model) as gates:
        device = device_of(model)  # moved once, not on every forward
        gates.gate = [keep[index, :width].float().to(device) for index, width in enumerate(widths)]
        yield gates


def _keep_lists(keep: torch.Tensor | Sequence[Sequence[int]], widths: tuple[int, ...]) -> list[list[int]]:
    if hasattr(keep, "dim"):
        if tuple(keep.shape) != (len(widths), max(widths)):
            raise ValueError(f"keep mask has shape {tuple(keep.shape)}, model has widths {widths}")
        lists = [[int(i) for i in row[:width].nonzero().flatten()] for row, width in zip(keep.bool(), widths)]
    else:
        lists = [sorted(int(i) for i in row) for row in keep]
    if len(lists) != len(widths):
        raise ValueError(f"{len(lists)} layers of kept neurons for a model of {len(widths)}")
    for index, (row, width) in enumerate(zip(lists, widths)):
        if len(set(row)) != len(row) or any(i < 0 or i >= width for i in row):
            raise ValueError(f"layer {index} has {width} neurons; cannot keep {row[:8]}")
        if not row:
            raise ValueError(f"cannot remove every neuron of layer {index}: keep at least one")
    return lists


def remove_neurons(model: nn.Module, keep: torch.Tensor | Sequence[Sequence[int]]) -> nn.Module:
    """Physically remove FFN neurons, in place: ``keep`` is a bool ``[L, I]`` mask or kept indices per layer.

    Original indices of what is kept are recorded in ``config.harness_kept_neurons``
    so a saved model can be rebuilt (:func:`harness.surgery.load_pruned`).
    """
    import torch

    layout, widths = ffn_layout_of(model), ffn_widths(model)
    kept = _keep_lists(keep, widths)  # validates every layer before touching any
    previous = getattr(model.config, KEPT_NEURONS_KEY, None) or [list(range(w)) for w in widths]
    for index, (layer, rows) in enumerate(zip(ffn_layers(model), kept)):
        where = torch.tensor(rows, dtype=torch.long)
        for up in layout.up:
            slice_projection(get(layer, up), where, "out")
        slice_projection(get(layer, layout.down), where, "in")
        if layout.width_attr:
            path, attr = layout.width_attr.rsplit(".", 1)
            setattr(get(layer, path), attr, len(rows))
        previous[index] = [previous[index][i] for i in rows]
    setattr(model.config, KEPT_NEURONS_KEY, previous)
    return model


def neuron_scores(model: nn.Module, per_weight: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum per-weight scores over each neuron's weights (its up rows and down column): ``[L, max I]``.

    Positions beyond a layer's current width get -1, below every real neuron.
    """
    import torch

    widths, modules = ffn_widths(model), dict(model.named_modules())
    scores = torch.full((len(widths), max(widths)), -1.0)

    def per_neuron(name: str, side: str) -> torch.Tensor:  # sum over the axis that is not the neuron's
        return per_weight[name].float().sum(1 - weight_axis(modules[name], side)).cpu()  # scores: CPU, float32

    for index, (ups, down) in enumerate(ffn_module_names(model)):
        total = per_neuron(down, "in")
        for up in ups:
            total = total + per_neuron(up, "out")
        scores[index, : widths[index]] = total
    return scores
