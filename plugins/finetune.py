"""Adapter ``finetune``: full fine-tuning with AdamW and linear warm-up then decay.

Produces the dense fine-tuned base before pruning, and is usable again after
pruning as recovery training.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import Adapter, Options, TrainRequest, TrainResult, hookimpl, option


@dataclass(frozen=True)
class FinetuneOptions(Options):
    """The shared AdamW loop's options (:func:`harness.modeling.train_adamw` reads them by key)."""

    weight_decay: float = option(0.01, low=0.0, help="AdamW weight decay")
    warmup_ratio: float = option(0.1, low=0.0, high=1.0, help="share of the steps spent warming up")
    # clipping to a norm of 0 would zero every gradient, so it must be > 0
    max_grad_norm: float = option(1.0, low=1e-12, help="gradient clipping norm")


OPTIONS = FinetuneOptions()


def train(request: TrainRequest) -> TrainResult:
    """Train every parameter that requires a gradient with the harness's shared AdamW loop."""
    from harness import modeling

    steps, loss = modeling.train_adamw(request)
    model = request.model
    return TrainResult(model, modeling.count_params(model, trainable_only=True), steps, loss)


@hookimpl
def harness_adapters() -> list[Adapter]:
    return [
        Adapter(
            name="finetune",
            train=train,
            description="full fine-tuning: AdamW, linear warm-up and decay",
            options=OPTIONS,
        )
    ]
