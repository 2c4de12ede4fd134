"""Adapter ``finetune``: full fine-tuning with AdamW and linear warm-up then decay.

Produces the dense fine-tuned base before pruning, and is usable again after
pruning as recovery training.
"""

from __future__ import annotations

from harness import Adapter, TrainRequest, TrainResult, hookimpl

OPTIONS = {"weight_decay": 0.01, "warmup_ratio": 0.1, "max_grad_norm": 1.0}
# inclusive bounds, checked on -o values; clipping to a norm of 0 would zero every gradient, so it must be > 0
RANGES = {"weight_decay": (0.0, None), "warmup_ratio": (0.0, 1.0), "max_grad_norm": (1e-12, None)}


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
            ranges=RANGES,
        )
    ]
