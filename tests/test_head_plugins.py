"""Built-in head plugins: the ``heads`` pruner, the ``random`` and ``head-gradient`` scorers, ``finetune``."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHITECTURES, batch_for, tiny_config, tiny_model
from harness_plugins import finetune, head_gradient, head_pruner, random_scores

from harness import PruneRequest, ScoreRequest, TrainRequest, modeling, surgery

pytestmark = pytest.mark.usefixtures("one_thread")


def lively_model(arch: str = "bert", seed: int = 0):
    """A tiny model with a wide init (0.2): gradients of order one, far above the tolerances."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(arch, initializer_range=0.2)).eval()


def prune(scores: torch.Tensor, sparsity: float, **options) -> torch.Tensor:
    return head_pruner.compute_mask(PruneRequest(scores, sparsity, options))


# --------------------------------------------------------------------------- pruner


def spread_scores(seed: int = 0) -> torch.Tensor:
    """Distinct scores 0..11 in [3, 4]; each layer's best head is one of the top three overall."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.empty(3, 4)
    tops = {(0, 2): 9.0, (1, 0): 10.0, (2, 3): 11.0}
    rest = iter(torch.randperm(9, generator=generator).tolist())
    for layer in range(3):
        for head in range(4):
            scores[layer, head] = tops.get((layer, head), None) or float(next(rest))
    return scores


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_global_removes_the_lowest_heads(sparsity):
    scores = spread_scores()
    remove = round(sparsity * 12)
    keep = prune(scores, sparsity, scope="global", min_heads_per_layer=1)
    assert keep.dtype == torch.bool and keep.shape == (3, 4)
    assert int((~keep).sum()) == remove
    assert torch.equal(keep, scores >= remove)  # scores are 0..11: the ``remove`` lowest go
    assert torch.equal(prune(scores, sparsity), keep)  # the default scope is global


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_global_on_random_scores(sparsity):
    scores = torch.rand(6, 8, generator=torch.Generator().manual_seed(3))
    keep = prune(scores, sparsity, scope="global", min_heads_per_layer=1)
    remove = round(sparsity * 48)
    assert int((~keep).sum()) == remove
    assert bool((keep.sum(1) >= 1).all())
    if (keep.sum(1) > 1).all():  # no layer hit the floor: the removed ones are exactly the lowest
        threshold = scores.flatten().sort().values[remove]
        assert torch.equal(keep, scores >= threshold)


@pytest.mark.parametrize("sparsity,per_layer", [(0.25, 1), (0.5, 2), (0.75, 3)])
def test_layer_scope_removes_the_same_count_per_layer(sparsity, per_layer):
    scores = torch.rand(3, 4, generator=torch.Generator().manual_seed(7))
    scores[0] *= 0.01  # layer 0 globally least important: a global ranking would strip it
    keep = prune(scores, sparsity, scope="layer", min_heads_per_layer=1)
    assert keep.shape == (3, 4) and keep.dtype == torch.bool
    assert (~keep).sum(1).tolist() == [per_layer] * 3
    for layer in range(3):
        lowest = set(scores[layer].argsort()[:per_layer].tolist())
        assert {h for h in range(4) if not keep[layer, h]} == lowest


def test_min_heads_per_layer_is_respected():
    scores = torch.tensor(
        [
            [0.0, 0.1, 0.2, 0.3],  # globally the least important layer
            [5.0, 1.0, 7.0, 3.0],
            [2.0, 6.0, 4.0, 8.0],
        ]
    )
    # floor 1: layer 0 keeps only its best head, then the next lowest elsewhere go
    keep = prune(scores, 0.5, min_heads_per_layer=1)
    assert keep.tolist() == [
        [False, False, False, True],
        [True, False, True, False],
        [False, True, True, True],
    ]
    # floor 2: layer 0 stops at two heads; the budget of 6 is filled from layers 1 and 2
    keep = prune(scores, 0.5, min_heads_per_layer=2)
    assert keep.sum(1).tolist() == [2, 2, 2]
    assert keep.tolist() == [
        [False, False, True, True],
        [True, False, True, False],
        [False, True, False, True],
    ]
    # floor 3 and 25 %: layer 0 can lose just one head
    keep = prune(scores, 0.25, min_heads_per_layer=3)
    assert int((~keep).sum()) == 3 and bool((keep.sum(1) >= 3).all())
    assert keep.tolist() == [[False, True, True, True], [True, False, True, True], [False, True, True, True]]
    # per layer, a floor that the budget would break is an error, never a silent shortfall
    with pytest.raises(ValueError, match="cannot remove 3 of 4 heads per layer keeping 2"):
        prune(scores, 0.75, scope="layer", min_heads_per_layer=2)
    keep = prune(scores, 0.5, scope="layer", min_heads_per_layer=2)
    assert keep.sum(1).tolist() == [2, 2, 2]
    assert keep[0].tolist() == [False, False, True, True]


def test_impossible_budget_raises():
    scores = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"cannot remove 9 of 12 heads keeping 2 per layer \(at most 6\)"):
        prune(scores, 0.75, min_heads_per_layer=2)
    with pytest.raises(ValueError, match=r"cannot remove 12 of 12 heads keeping 1 per layer \(at most 9\)"):
        prune(scores, 1.0)
    assert int((~prune(scores, 0.75, min_heads_per_layer=1)).sum()) == 9  # the edge is still possible
    for floor in (0, 5, -1):
        with pytest.raises(ValueError, match="min_heads_per_layer"):
            prune(scores, 0.25, min_heads_per_layer=floor)


@pytest.mark.parametrize("scope", ["Global", "heads", "", None])
def test_bad_scope_raises(scope):
    with pytest.raises(ValueError, match="scope must be 'global' or 'layer'"):
        prune(torch.rand(3, 4), 0.5, scope=scope)


def test_ties_are_broken_deterministically():
    flat = torch.ones(3, 4)
    keep = prune(flat, 0.25)
    # equal scores: the first heads in (layer, head) order go first, as long as the floor allows
    assert keep.tolist() == [[False, False, False, True], [True] * 4, [True] * 4]
    assert all(torch.equal(prune(flat.clone(), 0.25), keep) for _ in range(5))
    keep = prune(flat, 0.5)
    assert keep.tolist() == [[False, False, False, True], [False, False, False, True], [True] * 4]
    keep = prune(flat, 0.5, scope="layer")
    assert keep.tolist() == [[False, False, True, True]] * 3

    scores = torch.tensor([[0.5, 0.2, 0.2, 0.9], [0.2, 0.7, 0.8, 0.2], [0.6, 0.2, 0.3, 0.4]])
    keep = prune(scores, 0.25)  # five heads tie at 0.2: the first three in order go
    assert keep.tolist() == [[True, False, False, True], [False, True, True, True], [True, True, True, True]]
    keep = prune(scores, 0.25, scope="layer")
    assert keep.tolist() == [[True, False, True, True], [False, True, True, True], [True, False, True, True]]


def test_pruner_is_registered():
    (pruner,) = head_pruner.harness_pruners()
    assert pruner.name == "heads" and pruner.granularity == "head"
    assert pruner.compute_mask is head_pruner.compute_mask
    assert dict(pruner.options)["scope"] == "global" and dict(pruner.options)["min_heads_per_layer"] == 1


# --------------------------------------------------------------------------- random scorer


def test_random_scores_are_seeded():
    model = tiny_model("bert")
    first = random_scores.score(ScoreRequest(model, [], seed=3))
    again = random_scores.score(ScoreRequest(model, [], seed=3))
    other = random_scores.score(ScoreRequest(model, [], seed=4))
    offset = random_scores.score(ScoreRequest(model, [], seed=3, options={"offset": 1}))
    assert first.shape == (3, 4) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert torch.equal(offset, other)  # seed 3 + offset 1 is seed 4
    assert bool(((first >= 0) & (first < 1)).all())
    assert len(set(first.flatten().tolist())) == 12


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_random_scores_follow_the_model_geometry(arch):
    model = surgery.remove_heads(tiny_model(arch), [[0, 1], [0, 1, 2, 3], [3]])
    scores = random_scores.score(ScoreRequest(model, [], seed=0))
    assert scores.shape == (3, 4)
    assert scores[0, 2:].tolist() == [-1.0, -1.0] and scores[2, 1:].tolist() == [-1.0] * 3
    assert bool((scores[1] >= 0).all())


# --------------------------------------------------------------------------- head-gradient scorer


def calibration(model, sizes=(3, 4, 2)) -> list[dict[str, torch.Tensor]]:
    return [batch_for(model, batch_size=size, tokens=7 + i, seed=10 + i) for i, size in enumerate(sizes)]


def example_grads(model, batches) -> torch.Tensor:
    """Brute force: each example alone, gradient of its own loss w.r.t. a shared gate, ``[N, L, H]``."""
    heads = surgery.head_geometry(model).heads_per_layer
    grads = []
    for batch in batches:
        for b in range(len(batch["labels"])):
            single = {k: v[b : b + 1] for k, v in batch.items()}
            gate = [torch.ones(n, requires_grad=True) for n in heads]
            with surgery.HeadGates(model) as hooks:
                hooks.gate = gate
                loss = modeling.per_example_loss(model, single)
                assert loss.shape == (1,)
                layer_grads = torch.autograd.grad(loss[0], gate)
            row = torch.zeros(len(heads), max(heads))
            for layer, grad in enumerate(layer_grads):
                row[layer, : heads[layer]] = grad
            grads.append(row)
    return torch.stack(grads)


def batch_grads(model, batches) -> torch.Tensor:
    """Gradient of each batch's summed loss w.r.t. a shared ``[L, H]`` gate, ``[batches, L, H]``."""
    geometry = surgery.head_geometry(model)
    grads = []
    for batch in batches:
        gate = torch.ones(geometry.num_layers, max(geometry.heads_per_layer), requires_grad=True)
        with surgery.HeadGates(model) as hooks:
            hooks.gate = gate
            (grad,) = torch.autograd.grad(modeling.per_example_loss(model, batch).sum(), gate)
        grads.append(grad)
    return torch.stack(grads)


def l2_per_layer(values: torch.Tensor) -> torch.Tensor:
    return values / values.norm(dim=-1, keepdim=True)


def score(model, batches, **options) -> torch.Tensor:
    return head_gradient.score(ScoreRequest(model, batches, seed=0, options=options))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_gradient_matches_brute_force(arch):
    model = lively_model(arch, seed=1)
    batches = calibration(model)
    grads = example_grads(model, batches)
    assert grads.shape == (9, 3, 4)
    mean_abs = grads.abs().mean(0)
    assert mean_abs.min() > 1e-3  # every head matters a little: the comparison is not between zeros

    result = score(model, batches)
    assert result.shape == (3, 4)
    torch.testing.assert_close(result, l2_per_layer(mean_abs), rtol=0, atol=1e-5)
    torch.testing.assert_close(result.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-6)

    raw = score(model, batches, normalize=False)
    torch.testing.assert_close(raw, mean_abs, rtol=1e-4, atol=1e-6)
    explicit = score(model, batches, normalize=True, per_example=True)
    torch.testing.assert_close(explicit, result, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_gradient_per_batch(arch):
    model = lively_model(arch, seed=2)
    batches = calibration(model)
    per_batch = batch_grads(model, batches).abs().sum(0) / 9  # sum_batches |grad of batch sum| / examples
    raw = score(model, batches, per_example=False, normalize=False)
    torch.testing.assert_close(raw, per_batch, rtol=1e-4, atol=1e-6)
    normalized = score(model, batches, per_example=False)
    torch.testing.assert_close(normalized, l2_per_layer(per_batch), rtol=0, atol=1e-5)


def test_head_gradient_takes_abs_per_example():
    model = lively_model("bert", seed=3)
    batches = calibration(model)
    grads = example_grads(model, batches)
    assert bool(((grads > 0).any(0) & (grads < 0).any(0)).any())  # some head's sign differs by example

    per_example = score(model, batches, normalize=False) * 9
    per_batch = score(model, batches, per_example=False, normalize=False) * 9
    grand_total = grads.sum(0).abs()  # |gradient of the loss of the whole calibration set|
    torch.testing.assert_close(batch_grads(model, batches).sum(0).abs(), grand_total, rtol=1e-4, atol=1e-5)
    # triangle inequality: sum |g_x| >= sum_batches |sum_batch g_x| >= |sum g_x|
    assert bool((per_example >= per_batch - 1e-5).all())
    assert bool((per_batch >= grand_total - 1e-5).all())
    assert (per_example - grand_total).max() > 1e-2  # signs cancel in the total, not in the score
    assert (per_example - per_batch).max() > 1e-2


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_gradient_on_a_pruned_model(arch):
    model = surgery.remove_heads(lively_model(arch, seed=4), [[0, 2, 3], [0, 1, 2, 3], [1]])
    batches = calibration(model, sizes=(3, 2))
    grads = example_grads(model, batches)
    result = score(model, batches, normalize=False)
    assert result.shape == (3, 4)
    assert result[0, 3] == 0 and bool((result[2, 1:] == 0).all())
    torch.testing.assert_close(result, grads.abs().mean(0), rtol=1e-4, atol=1e-6)
    normalized = score(model, batches)
    torch.testing.assert_close(normalized[2, 0], torch.tensor(1.0), rtol=0, atol=1e-6)


def test_head_gradient_leaves_the_model_alone():
    model = lively_model("distilbert", seed=5)
    model.distilbert.embeddings.requires_grad_(False)  # partly frozen, as a caller may have it
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert not all(flags.values()) and any(flags.values())
    state = copy.deepcopy(model.state_dict())
    batches = calibration(model)
    before = modeling.logits(model, batches[0]).detach()

    score(model, batches)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    torch.testing.assert_close(modeling.logits(model, batches[0]).detach(), before, rtol=0, atol=0)
    for module in model.modules():  # no gate hook left behind
        assert not module._forward_pre_hooks

    broken = [{k: v for k, v in batches[0].items() if k != "labels"}]
    with pytest.raises(Exception):
        score(model, batches[:1] + broken)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    for module in model.modules():
        assert not module._forward_pre_hooks


def test_head_gradient_needs_batches():
    with pytest.raises(ValueError, match="at least one calibration batch"):
        score(tiny_model("bert"), [])


def test_scorers_are_registered():
    (gradient,) = head_gradient.harness_scorers()
    uniform, weights, neurons = random_scores.harness_scorers()
    assert [(s.name, s.granularity, s.baseline) for s in (weights, neurons)] == [
        ("random-weight", "weight", True), ("random-neuron", "neuron", True)]
    assert (gradient.name, gradient.granularity, gradient.score) == ("head-gradient", "head", head_gradient.score)
    assert dict(gradient.options) == {"normalize": True, "per_example": True}
    assert (uniform.name, uniform.granularity, uniform.score) == ("random", "head", random_scores.score)


# --------------------------------------------------------------------------- finetune adapter


def token_seven_batches(count: int, seed: int, size: int = 16, tokens: int = 10) -> list[dict[str, torch.Tensor]]:
    """Label 1 exactly when token id 7 appears somewhere in the sequence."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(10, 60, (size, tokens), generator=generator)
        labels = torch.arange(size) % 2
        positions = torch.randint(1, tokens, (size,), generator=generator)
        ids[labels.bool(), positions[labels.bool()]] = 7
        assert torch.equal((ids == 7).any(1).long(), labels)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_finetune_learns_a_toy_signal(arch):
    model = tiny_model(arch, seed=0)
    held_out = token_seven_batches(4, seed=99)

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(torch.cat([modeling.per_example_loss(model, b) for b in held_out]).mean())

    initial = held_out_loss()
    logged: list[tuple[str, float, int]] = []
    request = TrainRequest(
        model=model,
        batches=token_seven_batches(30, seed=0),
        steps=30,
        learning_rate=1e-2,
        seed=0,
        options=dict(finetune.OPTIONS),
        log=lambda name, value, step: logged.append((name, value, step)),
    )
    result = finetune.train(request)

    assert result.model is model and not model.training
    assert result.steps == 30
    assert result.trainable_params == modeling.count_params(model) == sum(p.numel() for p in model.parameters())
    assert [step for _, _, step in logged] == list(range(1, 31))
    assert {name for name, _, _ in logged} == {"train/loss"}
    losses = [value for _, value, _ in logged]
    assert result.final_loss == pytest.approx(sum(losses[-3:]) / 3)  # the mean of the last tenth of the steps
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first and result.final_loss < initial
    assert held_out_loss() < 0.5 * initial  # it generalises to unseen sequences
    predictions = modeling.predict(model, held_out)
    labels = [int(label) for b in held_out for label in b["labels"]]
    assert sum(p == y for p, y in zip(predictions, labels)) / len(labels) > 0.9


def test_finetune_counts_only_trainable_parameters():
    model = tiny_model("bert", seed=1)
    model.bert.embeddings.requires_grad_(False)
    frozen = [p.detach().clone() for p in model.bert.embeddings.parameters()]
    request = TrainRequest(model, token_seven_batches(3, seed=1), 3, 1e-3, 0, dict(finetune.OPTIONS))
    result = finetune.train(request)
    embedding_params = sum(p.numel() for p in model.bert.embeddings.parameters())
    assert result.trainable_params == modeling.count_params(model) - embedding_params
    assert result.steps == 3
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.bert.embeddings.parameters()))
