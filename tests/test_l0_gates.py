"""L0 hard-concrete head gates: the sampler, the expected L0 and the Lagrangian budget."""

from __future__ import annotations

import copy

import pytest
import torch
from harness_plugins import finetune, head_pruner, l0_gates

from harness import PruneRequest, ScoreRequest, TrainRequest, surgery
from harness.conformance import tiny_batches, tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("temperature", [1 / 3, 2 / 3])
def test_sampled_open_probability_matches_the_closed_form(temperature: float) -> None:
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0]).repeat(40_000, 1)
    samples = l0_gates.sample_gates(log_alpha, temperature, torch.Generator().manual_seed(0))
    assert samples.min() >= 0 and samples.max() <= 1
    empirical = (samples > 0).float().mean(0)
    expected = l0_gates.open_probability(log_alpha[0], temperature)
    torch.testing.assert_close(empirical, expected, rtol=0, atol=0.01)
    assert (samples == 0).any() and (samples == 1).any(), "the stretch gives exact zeros and ones"


def test_expected_l0_is_differentiable() -> None:
    log_alpha = torch.tensor([-2.0, 0.0, 3.0], requires_grad=True)
    probability = l0_gates.open_probability(log_alpha, 2 / 3)
    probability.sum().backward()
    torch.testing.assert_close(log_alpha.grad, probability.detach() * (1 - probability.detach()))
    assert (log_alpha.grad > 0).all()


def _signal_batches(count: int, seed: int, size: int = 32) -> list[dict[str, torch.Tensor]]:
    """Label 1 iff token 7 occurs somewhere: the [CLS] position must attend to find it."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(8, 64, (size, 10), generator=generator)
        labels = (torch.rand(size, generator=generator) < 0.5).long()
        where = torch.randint(1, 10, (size,), generator=generator)
        ids[labels.bool(), where[labels.bool()]] = 7
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


@pytest.fixture(scope="module")
def trained():
    """A tiny BERT fine-tuned on the signal, so heads differ in how much they matter."""
    model = tiny_bert(layers=3, heads=4)
    request = TrainRequest(model, iter(_signal_batches(300, seed=0)), 300, 3e-3, 0, dict(finetune.OPTIONS))
    return finetune.train(request).model


def _request(model, sparsity: float | None, **options) -> ScoreRequest:
    def train_batches(steps: int):
        return _signal_batches(steps, seed=1)

    model = copy.deepcopy(model)
    return ScoreRequest(model, tiny_batches(), 0, {**l0_gates.OPTIONS, **options}, sparsity, train_batches)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_lagrangian_drives_a_tiny_model_to_the_target_count(trained, sparsity: float) -> None:
    result = l0_gates.train_gates(_request(trained, sparsity, steps=400))
    assert result.target_open == 12 - round(sparsity * 12)
    assert abs(result.expected_open - result.target_open) < 0.5
    start = l0_gates.open_probability(torch.tensor(l0_gates.OPTIONS["init_log_alpha"]), 2 / 3) * 12
    assert start - result.expected_open > 0.9 * (start - result.target_open), "the controller moved the count"
    keep = head_pruner.compute_mask(PruneRequest(result.log_alpha, sparsity, dict(head_pruner.OPTIONS)))
    assert int(keep.sum()) == result.target_open, "the top heads by log-alpha fill the budget exactly"


def test_a_fixed_lambda_closes_more_gates_when_larger(trained) -> None:
    weak = l0_gates.train_gates(_request(trained, None, lambda_mode="fixed", l0_lambda=0.0, steps=200))
    strong = l0_gates.train_gates(_request(trained, None, lambda_mode="fixed", l0_lambda=0.05, steps=200))
    assert strong.expected_open < weak.expected_open - 2


def test_training_leaves_the_model_as_it_was(trained) -> None:
    request = _request(trained, 0.5, steps=20)
    before = {k: v.clone() for k, v in request.model.state_dict().items()}
    l0_gates.score(request)
    assert all(torch.equal(before[k], v) for k, v in request.model.state_dict().items())
    assert all(p.requires_grad for p in request.model.parameters())
    assert surgery.head_geometry(request.model).total_heads == 12


def test_bad_options_raise(trained) -> None:
    with pytest.raises(ValueError, match="lambda_mode"):
        l0_gates.train_gates(_request(trained, 0.5, lambda_mode="sometimes"))
    with pytest.raises(ValueError, match="needs a sparsity"):
        l0_gates.train_gates(_request(trained, None))


def test_joint_training_moves_the_weights_and_restores_the_flags(trained) -> None:
    request = _request(trained, 0.5, steps=20, train_encoder=True, encoder_lr=1e-3)
    before = {k: v.clone() for k, v in request.model.state_dict().items()}
    l0_gates.train_gates(request)
    after = request.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "jointly trained weights moved"
    assert all(p.requires_grad for p in request.model.parameters()) and not request.model.training
