"""Adapter ``relufy`` (Mirzadeh et al. 2023, "ReLU Strikes Back"): swap each FFN's activation to ReLU, then fine-tune.

GELU and SiLU leave almost no exact zeros in the FFN hidden activation; ReLU
zeros every negative pre-activation, which activation-sparse inference can
skip. The paper's first stage: replace the FFN activation (BERT's GELU,
GPT-2's ``gelu_new``, LLaMA's SiLU in act(gate) * up) by ReLU and recover the
accuracy by training; its second stage (ReLU after the normalisation layers)
is not done. The swap goes through :func:`harness.surgery.set_ffn_activation`,
which also sets the config (``hidden_act``, ``activation_function``,
``activation``), so ``save_pretrained`` / ``from_pretrained`` rebuild ReLU.
Training is ``finetune``'s: the shared AdamW loop and its options. The grid
compares GELU (``finetune``) and ReLU (``relufy``) models side by side, and
``teal`` or the activation statistics on each.
"""

from __future__ import annotations

from harness_plugins.finetune import FinetuneOptions

from harness import Adapter, TrainRequest, TrainResult, hookimpl

ACTIVATION = "relu"


def train(request: TrainRequest) -> TrainResult:
    """ReLU in every FFN, then every parameter that requires a gradient trained with the shared AdamW loop."""
    from harness import modeling, surgery

    model = request.model
    replaced = surgery.ffn_activation_name(model)
    surgery.set_ffn_activation(model, ACTIVATION)
    steps, loss = modeling.train_adamw(request)
    config = {"activation": ACTIVATION, "replaced": replaced}
    return TrainResult(model, modeling.count_params(model, trainable_only=True), steps, loss, config)


@hookimpl
def harness_adapters() -> list[Adapter]:
    return [
        Adapter(
            name="relufy",
            train=train,
            description="swap each FFN activation to ReLU (Mirzadeh et al. 2023), then full fine-tuning as finetune",
            options=FinetuneOptions(),
        )
    ]
