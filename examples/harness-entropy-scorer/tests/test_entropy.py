"""The attention-entropy scorer on a tiny random BERT built from a config (no download)."""

from __future__ import annotations

import torch
from harness_entropy.plugin import harness_scorers

from harness import ScoreRequest, conformance

SCORER = harness_scorers()[0]


def tiny_bert() -> torch.nn.Module:
    """Large initial weights: a default-initialised BERT attends almost uniformly with every head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "bert", vocab_size=64, hidden_size=32, num_attention_heads=4, num_hidden_layers=3,
        intermediate_size=64, max_position_embeddings=32, num_labels=2, initializer_range=0.5,
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()


def batches(pad: int = 0) -> list[dict[str, torch.Tensor]]:
    """Two batches of 4 examples with 3..6 real tokens, then ``pad`` extra padding positions."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        ids = torch.randint(5, 64, (4, 6), generator=generator)
        mask = torch.zeros_like(ids)
        for row, length in enumerate((6, 5, 4, 3)):
            mask[row, :length] = 1
        ids, mask = (torch.cat([t * mask, torch.zeros(4, pad, dtype=t.dtype)], 1) for t in (ids, mask))
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.arange(4) % 2})
    return out


def test_scores_are_finite_per_head_and_ignore_padding() -> None:
    model = tiny_bert()
    implementation = model.config._attn_implementation
    scores = SCORER.score(ScoreRequest(model, batches(), seed=0, options=dict(SCORER.options)))
    assert scores.shape == (3, 4) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert scores.unique().numel() == scores.numel(), "every head gets its own score"
    assert float(scores.std()) > 0.05, "heads differ by more than rounding noise"
    assert (scores <= 0).all() and (scores >= -1).all(), "normalised entropy lies in [0, 1]"
    assert model.config._attn_implementation == implementation, "the attention kernel is restored"
    padded = SCORER.score(ScoreRequest(model, batches(pad=5), seed=0, options=dict(SCORER.options)))
    torch.testing.assert_close(padded, scores, atol=1e-5, rtol=0)  # extra padding changes nothing


def test_passes_the_harness_conformance_suite() -> None:
    conformance.check_plugin(SCORER)
