"""Adapters ``lora``, ``dora`` and ``rslora``: low-rank adaptation through PEFT, merged before returning.

Three variants of one implementation, so the grid crosses them like ``finetune``:
plain LoRA (Hu et al. 2021, scale alpha/r), DoRA (Liu et al. 2024, ``use_dora``:
a learned magnitude per output unit times the normalised direction W + ΔW) and
rsLoRA (Kalajdzievski 2023, ``use_rslora``: scale alpha/√r, stable at larger r).
Which modules a ``targets`` choice adapts comes from :mod:`harness.surgery`'s
per-architecture tables (:func:`harness.surgery.target_modules`), the same weight
groups the pruners and :mod:`harness.spectra` use. The new task head
(``classifier``, and DistilBERT's ``pre_classifier``) is trained in full (PEFT's
``modules_to_save``); everything else stays frozen. Training is the harness's
shared loop (:func:`harness.modeling.train_adamw`: AdamW, warm-up and decay,
clipping, ``train/loss``) at the option ``lr``, not ``--lr``: full fine-tuning's
rate is far too low for factors that start at B = 0.

Head surgery and the scorers need a plain transformers model, so the adapter
is merged (``merge_and_unload``) before returning, with the caller's
``requires_grad`` flags restored. The learned updates ΔW = scale · B · A are
taken before merging (``TrainResult.updates``) for their spectra
(:mod:`harness.spectra`). For DoRA that is the *directional* update only: its
merged weight is m ⊙ (W + ΔW) / ‖W + ΔW‖ (per output unit), so merged − W ≠ ΔW.

Merging on a model pruned with zeros (unstructured masks) makes those weights
dense again: whoever pruned must re-apply the mask. Physically removed heads
(fewer q/k/v rows and o columns) just give smaller low-rank factors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from harness import Adapter, Options, TrainRequest, TrainResult, hookimpl, option

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from torch import nn

VARIANTS: dict[str, dict[str, bool]] = {
    "lora": {},
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
}
DESCRIPTIONS = {
    "lora": "LoRA through PEFT (scale alpha/r), merged into the weights after training",
    "dora": "DoRA through PEFT: LoRA direction plus a learned magnitude per output unit, merged",
    "rslora": "rank-stabilised LoRA through PEFT (scale alpha/sqrt(r)), merged",
}
# which weight groups (harness.surgery.GROUPS) each `targets` choice adapts
TARGETS: dict[str, tuple[str, ...]] = {
    "qv": ("q", "v"),
    "qkv": ("q", "k", "v"),
    "qkvo": ("q", "k", "v", "o"),
    "ffn": ("ffn_in", "ffn_out"),
    "all": ("q", "k", "v", "o", "ffn_in", "ffn_out"),
}
HEAD_MODULES = ("pre_classifier", "classifier", "score")  # a task head the harness created: trained in full


@dataclass(frozen=True)
class LoraOptions(Options):
    """Options of the three variants: the shared AdamW loop's (as in ``finetune``), then LoRA's own.

    Rank and alpha are at least 1 (alpha 0 scales the update away); rates must be > 0.
    ``lr`` is LoRA's own rate, used instead of --lr (full fine-tuning's 1e-4): the
    factors start at B = 0 and need a far higher rate. MiniLM on SST-2, 200 steps
    of 32, q/v at r=8, first 400 dev sentences: accuracy 0.810 at 1e-3, 0.825 at
    3e-3 (full fine-tuning at 1e-4: 0.855).
    """

    weight_decay: float = option(0.01, low=0.0, help="AdamW weight decay")
    warmup_ratio: float = option(0.1, low=0.0, high=1.0, help="share of the steps spent warming up")
    max_grad_norm: float = option(1.0, low=1e-12, help="gradient clipping norm")
    r: int = option(8, low=1, help="rank of the update")
    alpha: int = option(16, low=1, help="scale numerator: alpha/r (rslora: alpha/sqrt(r))")
    dropout: float = option(0.05, low=0.0, high=1.0, help="dropout on the adapter's input")
    targets: Literal["qv", "qkv", "qkvo", "ffn", "all"] = option("qv", help="weight groups that get adapters")
    lr: float = option(3e-3, low=1e-12, help="LoRA's learning rate, used instead of --lr")


OPTIONS = LoraOptions()
ADAPTER = "default"  # PEFT's adapter name


def target_modules(model: nn.Module, targets: str) -> list[str]:
    """Full dotted names of the modules in the chosen weight groups, from :mod:`harness.surgery`'s tables.

    Exact names, so BERT's two ``output.dense`` never mix. An architecture surgery
    does not know raises ``ValueError`` naming it.
    """
    from harness import surgery

    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {', '.join(TARGETS)}, not {targets!r}")
    groups = TARGETS[targets]
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or type(model).__name__
    if config is None:
        raise ValueError(f"LoRA cannot pick targets {targets!r} in {model_type}: not a transformers model (no config)")
    try:
        names = list(surgery.target_modules(model, groups))
    except ValueError as error:
        raise ValueError(f"LoRA cannot pick targets {targets!r} in {model_type}: {error}") from error
    if not names:
        raise ValueError(f"targets {targets!r} match no linear layer of {model_type} (groups {', '.join(groups)})")
    return names


def lora_config(model: nn.Module, variant: str, options: LoraOptions) -> LoraConfig:
    """The PEFT config of one variant: exact target names, the task head trained in full."""
    from peft import LoraConfig

    heads = [name for name, _ in model.named_children() if name in HEAD_MODULES]
    return LoraConfig(
        task_type="SEQ_CLS",
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=target_modules(model, options.targets),
        modules_to_save=heads,
        **VARIANTS[variant],
    )


def delta_weights(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """ΔW = scale · B · A of every adapted module (PEFT's ``get_delta_weight``), named from the model root."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    updates = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            delta = module.get_delta_weight(ADAPTER).detach().float().cpu().clone()
            updates[name.removeprefix(prefix)] = delta
    return updates


def train(request: TrainRequest, variant: str = "lora") -> TrainResult:
    """Wrap with PEFT, train with the shared AdamW loop at LoRA's own rate, take ΔW, merge, return the plain model."""
    import torch
    from peft import get_peft_model

    from harness import modeling

    options = LoraOptions.of(request.options)  # a (partial) dict from tests is checked and completed alike
    model = request.model
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    torch.manual_seed(request.seed)  # A's random init
    peft_model = get_peft_model(model, lora_config(model, variant, options))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    lr = options.lr
    inner = TrainRequest(peft_model, request.batches, request.steps, lr, request.seed, options, request.log)
    steps, final_loss = modeling.train_adamw(inner)
    with modeling.full_precision(model):  # B·A and the merge in float32, not in autocast's bfloat16
        updates = delta_weights(peft_model)
        merged = peft_model.merge_and_unload(safe_merge=True)
    for name, parameter in merged.named_parameters():
        parameter.requires_grad_(flags.get(name, True))
    merged.eval()
    config = {"variant": variant, "r": options.r, "alpha": options.alpha, "targets": options.targets, "lr": lr}
    return TrainResult(merged, int(trainable), steps, final_loss, config, updates)


@hookimpl
def harness_adapters() -> list[Adapter]:
    return [
        Adapter(
            name=variant,
            train=functools.partial(train, variant=variant),
            description=DESCRIPTIONS[variant],
            options=OPTIONS,
        )
        for variant in VARIANTS
    ]
