"""Adapter ``finetune``: full fine-tuning with AdamW and linear warm-up then decay.

Produces the dense fine-tuned base before pruning, and is usable again after
pruning as recovery training.
"""

from __future__ import annotations

from harness import Adapter, TrainRequest, TrainResult, hookimpl

OPTIONS = {"weight_decay": 0.01, "warmup_ratio": 0.1, "max_grad_norm": 1.0}


def train(request: TrainRequest) -> TrainResult:
    import torch
    from transformers import get_linear_schedule_with_warmup

    from harness import modeling

    model, options = request.model, request.options
    torch.manual_seed(request.seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=request.learning_rate, weight_decay=float(options["weight_decay"]))
    warmup = int(float(options["warmup_ratio"]) * request.steps)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, max(request.steps, 1))
    model.train()
    loss_value, step = float("nan"), 0
    for step, batch in enumerate(request.batches, start=1):
        loss = modeling.per_example_loss(model, batch).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, float(options["max_grad_norm"]))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        request.log("train/loss", loss_value, step)
    model.eval()
    return TrainResult(model, modeling.count_params(model, trainable_only=True), step, loss_value)


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
