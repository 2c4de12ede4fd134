"""Head surgery on tiny random BERT / RoBERTa / DistilBERT: gates, masks, removal, save/reload."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import ARCHITECTURES, batch_for, count, keep_mask, outputs, tiny_config

from harness import modeling, surgery

pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = ("sdpa", "eager")
KEEP_LISTS = [[0, 2, 3], [0, 1, 2, 3], [1]]  # uneven: 3 / 4 / 1 of 4 heads kept


def tiny_model(arch: str, seed: int = 0, attn: str = "sdpa"):
    """conftest's tiny model with a wider init (0.2, not 0.02): logits of order one, so
    differences that matter are far above the tolerances used below."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_config(arch, attn, initializer_range=0.2)
    return AutoModelForSequenceClassification.from_config(config).eval()


arch_backend = pytest.mark.parametrize(
    "arch,attn", [(arch, attn) for arch in ARCHITECTURES for attn in BACKENDS]
)


@arch_backend
def test_all_ones_gates_leave_logits_unchanged(arch, attn):
    model = tiny_model(arch, seed=1, attn=attn)
    batch = batch_for(model, batch_size=4, tokens=9)
    reference = outputs(model, batch)
    geometry = surgery.head_geometry(model)
    assert geometry.heads_per_layer == (4, 4, 4) and geometry.head_dim == 8
    with surgery.HeadGates(model) as gates:
        gates.gate = torch.ones(3, 4)
        gated = outputs(model, batch)
        gates.gate = [torch.ones(4) for _ in range(3)]
        listed = outputs(model, batch)
        gates.gate = torch.ones(4, 3, 4)  # per example
        per_example = outputs(model, batch)
    with surgery.mask_heads(model, torch.ones(3, 4, dtype=torch.bool)):
        masked = outputs(model, batch)
    for result in (gated, listed, per_example, masked):
        torch.testing.assert_close(result, reference, rtol=0, atol=1e-6)
    # the hooks are gone once the contexts close
    torch.testing.assert_close(outputs(model, batch), reference, rtol=0, atol=0)


@arch_backend
def test_zero_gate_changes_logits_and_matches_mask(arch, attn):
    model = tiny_model(arch, seed=2, attn=attn)
    batch = batch_for(model, batch_size=4, tokens=9)
    reference = outputs(model, batch)
    mask = keep_mask(KEEP_LISTS)
    with surgery.mask_heads(model, mask):
        masked = outputs(model, batch)
    with surgery.HeadGates(model) as gates:
        gates.gate = mask.float()
        gated = outputs(model, batch)
    assert (masked - reference).abs().max() > 1e-2  # masking really does something
    torch.testing.assert_close(gated, masked, rtol=0, atol=0)


@arch_backend
def test_remove_equals_mask_and_updates_geometry(arch, attn):
    model = tiny_model(arch, seed=3, attn=attn)
    batch = batch_for(model, batch_size=4, tokens=9, seed=5)
    hidden = model.config.hidden_size if arch != "distilbert" else model.config.dim
    mask = keep_mask(KEEP_LISTS)
    with surgery.mask_heads(model, mask):
        masked = outputs(model, batch)
    before = count(model)
    returned = surgery.remove_heads(model, mask)
    assert returned is model
    removed = outputs(model, batch)
    torch.testing.assert_close(removed, masked, rtol=0, atol=1e-4)

    geometry = surgery.head_geometry(model)
    assert geometry.heads_per_layer == (3, 4, 1)
    assert geometry.head_dim == 8 and geometry.total_heads == 8
    layout = surgery.layout_of(model)
    for layer, kept in zip(surgery._layers(model), (3, 4, 1)):
        attention = surgery._get(layer, layout.attention)
        assert getattr(attention, layout.heads_attr) == kept
        for name in (layout.q, layout.k, layout.v):
            linear = surgery._get(attention, name)
            assert tuple(linear.weight.shape) == (kept * 8, hidden)
            assert tuple(linear.bias.shape) == (kept * 8,)
            assert linear.out_features == kept * 8
        o = surgery._get(layer, layout.o)
        assert tuple(o.weight.shape) == (hidden, kept * 8) and o.in_features == kept * 8
        assert tuple(o.bias.shape) == (hidden,)
        for attr in layout.width_attrs:
            assert getattr(attention, attr) == kept * 8

    removed_heads = 12 - 8
    per_head = 3 * (8 * hidden + 8) + hidden * 8  # q/k/v rows + their biases, o columns
    assert before - count(model) == removed_heads * per_head
    assert model.config.harness_kept_heads == KEEP_LISTS


@arch_backend
def test_removed_weights_are_the_kept_slices(arch, attn):
    dense = tiny_model(arch, seed=4, attn=attn)
    pruned = surgery.remove_heads(copy.deepcopy(dense), KEEP_LISTS)
    layout = surgery.layout_of(dense)
    for dense_layer, layer, heads in zip(surgery._layers(dense), surgery._layers(pruned), KEEP_LISTS):
        rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in heads])
        for name in (layout.q, layout.k, layout.v):
            a = surgery._get(surgery._get(dense_layer, layout.attention), name)
            b = surgery._get(surgery._get(layer, layout.attention), name)
            assert torch.equal(b.weight, a.weight[rows]) and torch.equal(b.bias, a.bias[rows])
        a, b = surgery._get(dense_layer, layout.o), surgery._get(layer, layout.o)
        assert torch.equal(b.weight, a.weight[:, rows]) and torch.equal(b.bias, a.bias)


@arch_backend
def test_removing_twice_equals_removing_once(arch, attn):
    first = [[0, 1, 3], [0, 2, 3], [1, 2, 3]]
    second = [[0, 2], [1], [0, 1, 2]]  # relative to the heads left after ``first``
    combined = [[0, 3], [2], [1, 2, 3]]
    twice = tiny_model(arch, seed=5, attn=attn)
    once = copy.deepcopy(twice)
    batch = batch_for(twice, batch_size=4, tokens=9)

    surgery.remove_heads(twice, keep_mask(first))
    assert twice.config.harness_kept_heads == first
    surgery.remove_heads(twice, keep_mask(second, heads=3))  # bool mask over current heads
    surgery.remove_heads(once, combined)

    assert twice.config.harness_kept_heads == combined
    assert once.config.harness_kept_heads == combined
    assert surgery.head_geometry(twice).heads_per_layer == (2, 1, 3)
    torch.testing.assert_close(outputs(twice, batch), outputs(once, batch), rtol=0, atol=1e-6)
    for (name, a), (_, b) in zip(twice.named_parameters(), once.named_parameters()):
        assert torch.equal(a, b), name


@arch_backend
def test_save_and_reload(arch, attn, tmp_path):
    base = tiny_model(arch, seed=6, attn=attn)
    model = surgery.remove_heads(copy.deepcopy(base), keep_mask(KEEP_LISTS))
    batch = batch_for(model, batch_size=4, tokens=9, seed=3)
    expected = outputs(model, batch)

    directory = surgery.save_pruned(model, tmp_path / "pruned", base_model="x")
    record = json.loads((directory / "head_mask.json").read_text())
    assert record["base_model"] == "x"
    assert record["kept_heads"] == KEEP_LISTS
    assert record["head_mask"] == keep_mask(KEEP_LISTS).tolist()
    assert all(type(v) is bool for row in record["head_mask"] for v in row)

    loaded = surgery.load_pruned(directory)
    assert not loaded.training
    assert surgery.head_geometry(loaded).heads_per_layer == (3, 4, 1)
    assert loaded.config.harness_kept_heads == KEEP_LISTS
    assert count(loaded) == count(model)
    torch.testing.assert_close(outputs(loaded, batch), expected, rtol=0, atol=1e-5)

    fresh = tiny_model(arch, seed=6, attn=attn)  # a fresh copy of the dense base
    surgery.remove_heads(fresh, record["kept_heads"])
    torch.testing.assert_close(outputs(fresh, batch), expected, rtol=0, atol=1e-6)


@arch_backend
def test_save_and_reload_after_two_removals(arch, attn, tmp_path):
    model = tiny_model(arch, seed=7, attn=attn)
    surgery.remove_heads(model, [[1, 2, 3], [0, 1, 2, 3], [0, 3]])
    surgery.remove_heads(model, [[0, 2], [3], [1]])
    assert model.config.harness_kept_heads == [[1, 3], [3], [3]]
    batch = batch_for(model, batch_size=3, tokens=8)
    directory = surgery.save_pruned(model, tmp_path / "twice", base_model="base")
    record = json.loads((directory / "head_mask.json").read_text())
    assert record["head_mask"] == [[False, True, False, True], [False, False, False, True], [False] * 3 + [True]]
    loaded = surgery.load_pruned(directory)
    torch.testing.assert_close(outputs(loaded, batch), outputs(model, batch), rtol=0, atol=1e-5)


def per_example_gate_grads(model, batch):
    """One backward pass with a ``[B, H]`` gate per layer: every example's gate gradient."""
    heads = surgery.head_geometry(model).heads_per_layer
    size = len(batch["labels"])
    gates = [torch.ones(size, n, requires_grad=True) for n in heads]
    with surgery.HeadGates(model) as hooks:
        hooks.gate = gates
        loss = modeling.per_example_loss(model, batch)
        grads = torch.autograd.grad(loss.sum(), gates)
    return torch.stack(grads, dim=1)  # [B, L, H]


def looped_gate_grads(model, batch):
    """Reference: for each example alone, gradient of its loss w.r.t. a shared ``[L, H]`` gate."""
    geometry = surgery.head_geometry(model)
    rows = []
    for b in range(len(batch["labels"])):
        gate = torch.ones(geometry.num_layers, max(geometry.heads_per_layer), requires_grad=True)
        with surgery.HeadGates(model) as hooks:
            hooks.gate = gate
            loss = modeling.per_example_loss(model, batch)[b]
            (grad,) = torch.autograd.grad(loss, gate)
        rows.append(grad)
    return torch.stack(rows)


@arch_backend
def test_per_example_gate_gradients(arch, attn):
    model = tiny_model(arch, seed=8, attn=attn)
    batch = batch_for(model, batch_size=4, tokens=9, seed=2)
    fast = per_example_gate_grads(model, batch)
    slow = looped_gate_grads(model, batch)
    assert fast.shape == (4, 3, 4)
    assert slow.abs().max() > 1e-4  # the comparison is not between zeros
    assert not torch.allclose(slow[0], slow[1], atol=1e-5)  # examples really differ
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    # and each example alone in a batch of one agrees as well
    for b in range(4):
        single = {k: v[b : b + 1] for k, v in batch.items()}
        torch.testing.assert_close(looped_gate_grads(model, single)[0], slow[b], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_per_example_gate_gradients_after_removal(arch):
    model = surgery.remove_heads(tiny_model(arch, seed=9), KEEP_LISTS)
    batch = batch_for(model, batch_size=3, tokens=8)
    heads = (3, 4, 1)
    gates = [torch.ones(3, n, requires_grad=True) for n in heads]
    with surgery.HeadGates(model) as hooks:
        hooks.gate = gates
        grads = torch.autograd.grad(modeling.per_example_loss(model, batch).sum(), gates)
    for b in range(3):
        shared = [torch.ones(n, requires_grad=True) for n in heads]
        with surgery.HeadGates(model) as hooks:
            hooks.gate = shared
            alone = torch.autograd.grad(modeling.per_example_loss(model, batch)[b], shared)
        for layer in range(3):
            assert grads[layer].shape == (3, heads[layer])
            torch.testing.assert_close(grads[layer][b], alone[layer], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sdpa_and_eager_give_the_same_gate_gradients(arch):
    sdpa = tiny_model(arch, seed=10, attn="sdpa")
    eager = tiny_model(arch, seed=10, attn="eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    batch = batch_for(sdpa, batch_size=4, tokens=9, seed=1)
    a, b = per_example_gate_grads(sdpa, batch), per_example_gate_grads(eager, batch)
    assert a.abs().max() > 1e-4
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def assert_untouched(model, state: dict[str, torch.Tensor]) -> None:
    assert surgery.head_geometry(model).heads_per_layer == (4, 4, 4)
    assert getattr(model.config, surgery.KEPT_HEADS_KEY, None) is None
    current = model.state_dict()
    assert current.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(current[name], value), name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_removing_every_head_of_a_layer_raises(arch):
    model = tiny_model(arch, seed=11)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="every head of layer 1"):
        surgery.remove_heads(model, keep_mask([[0, 1], [], [2]]))
    with pytest.raises(ValueError, match="every head of layer 0"):
        surgery.remove_heads(model, [[], [1], [2]])
    with pytest.raises(ValueError, match="every head of layer 2"):
        surgery.remove_heads(model, [[0], [1], []])
    assert_untouched(model, state)  # a refused removal leaves no layer half-pruned


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bad_keep_arguments_raise(arch):
    model = tiny_model(arch, seed=12)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        surgery.remove_heads(model, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="cannot keep"):
        surgery.remove_heads(model, [[0], [1], [4]])
    with pytest.raises(ValueError, match="cannot keep"):
        surgery.remove_heads(model, [[0], [-1], [3]])
    with pytest.raises(ValueError, match="layers"):
        surgery.remove_heads(model, [[0], [1]])
    with pytest.raises(ValueError, match="repeat"):  # a head kept twice would be duplicated
        surgery.remove_heads(model, [[0, 1], [2, 2], [3]])
    assert_untouched(model, state)
    with surgery.HeadGates(model) as hooks:
        hooks.gate = torch.ones(3, 3)
        with pytest.raises(ValueError, match="4 heads"):
            outputs(model, batch_for(model))


UNKNOWN_CONFIGS = {
    "electra": dict(vocab_size=50, embedding_size=16, hidden_size=16, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=32, max_position_embeddings=32),
    "albert": dict(vocab_size=50, embedding_size=16, hidden_size=16, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=32, max_position_embeddings=32),
    "gpt2": dict(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32),
}


def test_unknown_architecture_raises_and_names_it():
    from transformers import AutoConfig, AutoModelForSequenceClassification

    absent = [arch for arch in UNKNOWN_CONFIGS if arch not in surgery.LAYOUTS]
    assert absent, "every candidate architecture is supported now: add an unsupported one here"
    arch = absent[0]
    assert arch not in surgery.LAYOUTS
    config = AutoConfig.for_model(arch, num_labels=2, **UNKNOWN_CONFIGS[arch])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    assert model.config.model_type == arch
    for call in (
        lambda: surgery.layout_of(model),
        lambda: surgery.head_geometry(model),
        lambda: surgery.HeadGates(model),
        lambda: surgery.remove_heads(model, [[0], [1]]),
    ):
        with pytest.raises(ValueError, match=f"architecture '{arch}'"):
            call()
