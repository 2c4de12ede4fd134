"""Under transformers 4.x, which still has ``head_mask``, the harness's gates agree with it."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import batch_for, tiny_config
from harness_plugins import head_gradient

from harness import ScoreRequest, modeling, surgery

pytestmark = pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) >= 5, reason="head_mask exists only in transformers 4.x (tox -e tf457)"
)


def _model(attn: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config("bert", attn, initializer_range=0.2)).eval()


def test_head_importance_equals_the_head_mask_gradient() -> None:
    model = _model("eager")  # head_mask needs the eager backend in 4.x
    batches = [batch_for(model, seed=s) for s in range(3)]
    geometry = surgery.head_geometry(model)
    expected = torch.zeros(geometry.num_layers, max(geometry.heads_per_layer))
    for batch in batches:
        for b in range(len(batch["labels"])):
            single = {k: v[b : b + 1] for k, v in batch.items()}
            mask = torch.ones_like(expected, requires_grad=True)
            loss = torch.nn.functional.cross_entropy(
                model(**modeling.model_inputs(single), head_mask=mask).logits, single["labels"]
            )
            expected += torch.autograd.grad(loss, mask)[0].abs()
    expected /= sum(len(b["labels"]) for b in batches)
    request = ScoreRequest(model, batches, 0, {"normalize": False, "per_example": True})
    torch.testing.assert_close(head_gradient.score(request), expected, rtol=0, atol=1e-5)


def test_masking_equals_head_mask() -> None:
    model = _model("eager")
    batch = batch_for(model)
    keep = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    reference = model(**modeling.model_inputs(batch), head_mask=keep.float()).logits
    with surgery.mask_heads(model, keep):
        gated = modeling.logits(model, batch)
    torch.testing.assert_close(gated, reference, rtol=0, atol=1e-5)
