"""FFN activation surgery: the zeros of each FFN's hidden activation, run-time thresholds on it, its function swapped.

The hidden activation of a block's FFN is the input of its down projection (the
FFN layouts of :mod:`harness.surgery.neurons`): BERT's GELU output going into
``output.dense``, DistilBERT's ``ffn.lin2``, GPT-2's ``mlp.c_proj`` and
``act(gate) * up`` going into LLaMA/Qwen2/Mistral's ``mlp.down_proj``. Unlike
weight pruning, zeroing it changes no weight: it happens per token at run time.

Thresholds (TEAL, Liu et al. 2024) live on the down projection itself: a
non-persistent buffer :data:`ACTIVATION_THRESHOLD_KEY` read by a module-level
forward pre-hook. So they survive ``copy.deepcopy`` (the harness copies models)
and pickling, move with ``.to(device)`` and with their block when blocks are
removed, and never enter a ``state_dict``: a saved model reloads dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from harness.surgery.common import get, in_width
from harness.surgery.neurons import ffn_layers, ffn_layout_of

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.records import Batch

ACTIVATION_THRESHOLD_KEY = "harness_act_threshold"
MAX_VALUES = 1 << 22  # |h| values per layer a threshold is the quantile of; a uniform sample beyond that

_BERT_ACT = ("intermediate.intermediate_act_fn", "hidden_act")
_LLAMA_ACT = ("mlp.act_fn", "hidden_act")
# Per architecture: where each block keeps its FFN activation module, and the config attribute naming it.
ACTIVATION_LAYOUTS: dict[str, tuple[str, str]] = {
    "bert": _BERT_ACT,
    "roberta": _BERT_ACT,
    "xlm-roberta": _BERT_ACT,
    "distilbert": ("ffn.activation", "activation"),
    "gpt2": ("mlp.act", "activation_function"),
    "llama": _LLAMA_ACT,
    "qwen2": _LLAMA_ACT,
    "mistral": _LLAMA_ACT,
}


@dataclass(frozen=True)
class ActivationStats:
    """One layer's FFN hidden activation over real tokens: exact zeros, entries with ``|h| <= eps``, all entries."""

    zeros: int
    near_zeros: int
    values: int
    tokens: int

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.values if self.values else float("nan")

    @property
    def near_zero_fraction(self) -> float:
        return self.near_zeros / self.values if self.values else float("nan")


def down_projections(model: nn.Module) -> list[nn.Module]:
    """Each block's FFN down projection (``nn.Linear`` or GPT-2's ``Conv1D``), whose input is the hidden activation."""
    layout = ffn_layout_of(model)
    return [get(layer, layout.down) for layer in ffn_layers(model)]  # type: ignore[misc]


def _real_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` as ``[real tokens, width]``: padding (``mask == 0``) dropped; no mask: every token is real."""
    flat = x.reshape(-1, x.shape[-1])
    if mask is None:
        return flat
    if x.shape[:-1].numel() != mask.numel():
        raise RuntimeError(f"an FFN activation of shape {tuple(x.shape)} does not line up with the attention mask "
                           f"{tuple(mask.shape)} (a chunked feed-forward?)")
    return flat[mask.reshape(-1).bool()]


def visit_ffn_activations(model: nn.Module, batches: Iterable[Batch],
                          visit: Callable[[int, torch.Tensor], None]) -> None:
    """Run every batch (eval, inference mode) and call ``visit(layer, h)``, ``h`` = ``[real tokens, width]``.

    ``h`` is what the down projection really receives, after any installed
    threshold (its hook runs first). Modes and hooks are restored afterwards.
    """
    import torch

    from harness.modeling import model_inputs

    device = next(iter(model.parameters()), torch.empty(0)).device
    current: dict = {"mask": None}

    def hook_for(index: int) -> Callable:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            visit(index, _real_tokens(args[0] if args else next(iter(kwargs.values())), current["mask"]))

        return pre_hook

    modes = [(module, module.training) for module in model.modules()]
    handles, ran = [], 0
    try:
        for index, module in enumerate(down_projections(model)):
            handles.append(module.register_forward_pre_hook(hook_for(index), with_kwargs=True))
        model.eval()
        with torch.inference_mode():
            for batch in batches:
                inputs = {key: value.to(device) for key, value in model_inputs(batch).items()}
                current["mask"] = inputs.get("attention_mask")
                model(**inputs)
                ran += 1
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode
    if not ran:
        raise ValueError("measuring FFN activations needs at least one batch")


def ffn_activation_stats(model: nn.Module, batches: Iterable[Batch], eps: float = 1e-3) -> list[ActivationStats]:
    """Per layer: exact zeros and ``|h| <= eps`` entries of the FFN hidden activation over real tokens."""
    counts = [[0, 0, 0, 0] for _ in down_projections(model)]

    def count(index: int, h: torch.Tensor) -> None:
        row = counts[index]
        row[0] += int((h == 0).sum())
        row[1] += int((h.abs() <= eps).sum())
        row[2] += h.numel()
        row[3] += h.shape[0]

    visit_ffn_activations(model, batches, count)
    return [ActivationStats(*row) for row in counts]


def _threshold_hook(module: nn.Module, args: tuple) -> tuple | None:
    """Zero the input's entries with ``|h| <`` the module's threshold (module level: deepcopy and pickle keep it)."""
    threshold = getattr(module, ACTIVATION_THRESHOLD_KEY, None)
    if threshold is None:
        return None
    x = args[0]
    return (x.masked_fill(x.abs() < threshold.to(x.dtype), 0), *args[1:])


def _has_hook(module: nn.Module) -> bool:
    return any(hook is _threshold_hook for hook in module._forward_pre_hooks.values())


def _remove_threshold(module: nn.Module) -> None:
    for key in [k for k, hook in module._forward_pre_hooks.items() if hook is _threshold_hook]:
        del module._forward_pre_hooks[key]
    if ACTIVATION_THRESHOLD_KEY in module._buffers:
        delattr(module, ACTIVATION_THRESHOLD_KEY)


def set_activation_thresholds(model: nn.Module, thresholds: Sequence[float | None]) -> nn.Module:
    """Install one magnitude threshold per layer (``None``: none there) on the FFN hidden activation, in place.

    At run time, entries with ``|h| < t`` become 0 before the down projection;
    ``t = 0`` changes nothing. Setting again replaces the values.
    """
    import torch

    modules = down_projections(model)
    if len(thresholds) != len(modules):
        raise ValueError(f"{len(thresholds)} thresholds for a model of {len(modules)} FFN layers")
    if any(t is not None and not float(t) >= 0 for t in thresholds):
        raise ValueError(f"thresholds must be >= 0 (or None), not {list(thresholds)}")
    for module, threshold in zip(modules, thresholds):
        if threshold is None:
            _remove_threshold(module)
            continue
        value = torch.tensor(float(threshold), device=module.weight.device)
        if ACTIVATION_THRESHOLD_KEY in module._buffers:
            module._buffers[ACTIVATION_THRESHOLD_KEY] = value
        else:
            module.register_buffer(ACTIVATION_THRESHOLD_KEY, value, persistent=False)
        if not _has_hook(module):
            module.register_forward_pre_hook(_threshold_hook)
    return model


def activation_thresholds(model: nn.Module) -> list[float | None]:
    """Each layer's installed threshold, ``None`` where there is none."""
    found = [getattr(module, ACTIVATION_THRESHOLD_KEY, None) for module in down_projections(model)]
    return [None if t is None else float(t) for t in found]


def remove_activation_thresholds(model: nn.Module, layers: Iterable[int] | None = None) -> nn.Module:
    """Drop the thresholds of ``layers`` (all when ``None``), in place: those layers run dense again."""
    modules = down_projections(model)
    for index in range(len(modules)) if layers is None else layers:
        _remove_threshold(modules[index])
    return model


def threshold_for(values: torch.Tensor, sparsity: float) -> float:
    """The magnitude below which ``round(sparsity × n)`` of ``values`` (``|h|``, flat) lie: between ranks k and k+1.

    Ties at the quantile (ReLU's exact zeros) keep it there: a layer can be sparser
    than asked, never thresholded past values that equal the k-th.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], not {sparsity}")
    n = values.numel()
    k = round(sparsity * n)
    if k <= 0 or n == 0:
        return 0.0
    if k >= n:
        return float("inf")
    if values.device.type == "mps":  # kthvalue may be missing there
        values = values.cpu()
    below, above = (values.kthvalue(rank).values for rank in (k, k + 1))
    return float((below + above) / 2 if above > below else above)  # in the values' dtype: what the buffer holds


def calibrate_activation_thresholds(model: nn.Module, batches: Sequence[Batch], sparsity: float,
                                    max_values: int = MAX_VALUES, seed: int = 0) -> list[float]:
    """Per layer, the threshold that zeros a ``sparsity`` share of the FFN hidden activation on ``batches``.

    One pass over the model as it is (TEAL calibrates on dense activations);
    padding excluded. Beyond ``max_values`` entries per layer the quantile is
    taken on a uniform random sample (seeded), off by ~sqrt(s(1-s)/max_values).
    """
    import torch

    if not batches:
        raise ValueError("calibrating activation thresholds needs at least one batch")
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
    modules = down_projections(model)
    rates = [min(1.0, max_values / max(1, tokens * in_width(m))) for m in modules]
    samples: list[list[torch.Tensor]] = [[] for _ in modules]
    generator: dict = {}

    def keep(index: int, h: torch.Tensor) -> None:
        values = h.abs().float().flatten()
        if rates[index] < 1.0:  # drawn on the CPU, then moved: the same sample on every device
            if "g" not in generator:
                generator["g"] = torch.Generator().manual_seed(seed)
            draws = torch.rand(values.numel(), generator=generator["g"]).to(values.device)
            values = values[draws < rates[index]]
        samples[index].append(values)

    visit_ffn_activations(model, batches, keep)
    return [threshold_for(torch.cat(parts), sparsity) for parts in samples]


def _activation_layout(model: nn.Module) -> tuple[str, str]:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ACTIVATION_LAYOUTS:
        known = ", ".join(sorted(ACTIVATION_LAYOUTS))
        raise ValueError(f"activation surgery does not know architecture {model_type!r} (known: {known})")
    return ACTIVATION_LAYOUTS[model_type]


def ffn_activation_name(model: nn.Module) -> str:
    """The FFN activation the config names (``gelu``, ``silu``, ``relu``, ...): what a reload builds."""
    return str(getattr(model.config, _activation_layout(model)[1]))


def set_ffn_activation(model: nn.Module, name: str) -> nn.Module:
    """Swap every block's FFN activation for ``transformers``' ``name`` (e.g. ``"relu"``) and say so in the config.

    The config attribute (``hidden_act``, GPT-2's ``activation_function``,
    DistilBERT's ``activation``) changes too, so ``save_pretrained`` /
    ``from_pretrained`` rebuild the same function. In place.
    """
    from transformers.activations import ACT2FN

    path, attr = _activation_layout(model)
    if name not in ACT2FN:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(sorted(ACT2FN))})")
    owner, _, leaf = path.rpartition(".")
    for layer in ffn_layers(model):
        setattr(get(layer, owner), leaf, ACT2FN[name])
    setattr(model.config, attr, name)
    return model
