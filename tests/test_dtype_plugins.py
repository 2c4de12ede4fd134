"""Built-in granularities, scorers and pruners under reduced precision (bfloat16), on the CPU.

The harness scores and prunes float32 models inside ``torch.autocast`` when asked
for bf16, and evaluates the pruned model cast with ``model.to(torch.bfloat16)``.
So every gate, mask and threshold a granularity installs must follow the
activations' dtype (a float32 gate would promote a bf16 activation before a bf16
linear: "mat1 and mat2 must have the same dtype"), and the statistics that need
precision (XᵀX, SparseGPT's OBS updates) must stay float32 under autocast.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch_for, tiny_config

from harness import PruneRequest, ScoreRequest, calibration, surgery
from harness.checks import zero_scores
from harness.plugins import load_registry

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ("bert", "llama")
SPARSITY = 0.5
# a scorer for each granularity, to drive the pruners that use scores
DRIVER = {"head": "random", "neuron": "random-neuron", "weight": "magnitude", "layer": "random-layer"}
OPTIONS = {"l0-gates": {"steps": 3}}
LLAMA_PAD = 0


def tiny_llama(seed: int = 0):
    """LLaMA with grouped-query attention: 4 query heads, 2 key/value heads, 2 layers."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    config = LlamaConfig(vocab_size=120, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, intermediate_size=64, max_position_embeddings=64, num_labels=2,
                         pad_token_id=LLAMA_PAD, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def tiny_bert(seed: int = 0):
    """Logits of order one (init 0.2), so what masks change is far above bf16 rounding."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config("bert", initializer_range=0.2)).eval()


def model_of(arch: str):
    return tiny_bert() if arch == "bert" else tiny_llama()


def batches_of(model, count: int = 2) -> list[dict[str, torch.Tensor]]:
    batches = [batch_for(model, batch_size=3, tokens=8, seed=seed) for seed in range(count)]
    if model.config.model_type == "llama":  # right padding holds the pad id (the classifier reads the last real token)
        for batch in batches:
            batch["input_ids"][batch["attention_mask"] == 0] = LLAMA_PAD
    return batches


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def record(registry, role: str, name: str):
    return registry.by_role[role][name][0].record


def granularity_of(registry, name: str):
    return record(registry, "granularity", name)


def targets_for(granularity, model) -> tuple[str, ...]:
    return surgery.target_modules(model) if granularity.uses_targets else ()


def score(registry, name: str, model, batches, autocast: bool = False):
    """A scorer's output on a copy of ``model`` (float32 weights), under bf16 autocast if asked."""
    scorer = record(registry, "scorer", name)
    granularity = granularity_of(registry, scorer.granularity)
    copied = copy.deepcopy(model)
    targets = targets_for(granularity, copied)

    def train_batches(steps: int):
        return [batches[step % len(batches)] for step in range(steps)]

    request = ScoreRequest(copied, batches, 0, OPTIONS.get(name, {}), SPARSITY, train_batches, targets=targets)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        values = scorer.score(request)
    return values, granularity.shapes(model, targets)


def prune(registry, name: str, model, batches, autocast: bool = False):
    """(keep-mask, the model to apply it to): the pruner run on a copy, under bf16 autocast if asked."""
    pruner = record(registry, "pruner", name)
    granularity = granularity_of(registry, pruner.granularity)
    if pruner.uses_scores:
        scores, _ = score(registry, DRIVER[pruner.granularity], model, batches)
        scores = scores if isinstance(scores, dict) else scores.float()
    else:
        scores = zero_scores(granularity.shapes(model, targets_for(granularity, model)))
    copied = copy.deepcopy(model)
    request = PruneRequest(scores, SPARSITY, {}, 0, surgery.kv_heads(copied), copied, batches=batches)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        keep = pruner.compute_mask(request)
    return keep, (copied if pruner.updates_model else copy.deepcopy(model))


def logits_of(model, batch) -> torch.Tensor:
    from harness import modeling

    with torch.inference_mode():
        return modeling.logits(model, batch)


def assert_finite(values) -> None:
    for name, tensor in (values.items() if isinstance(values, dict) else [("", values)]):
        assert tensor.is_floating_point(), name
        assert bool(torch.isfinite(tensor).all()), f"{name}: scores not finite"


# --- granularities: pruned, then cast to bf16 --------------------------------------------------------------------


PRUNERS = {"head": "heads", "neuron": "neurons", "weight": "unstructured", "layer": "layers", "activation": "teal"}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("unit", sorted(PRUNERS))
def test_a_pruned_model_runs_in_bfloat16(registry, arch: str, unit: str) -> None:
    model = model_of(arch)
    batches = batches_of(model)
    granularity = granularity_of(registry, unit)
    keep, base = prune(registry, PRUNERS[unit], model, batches)
    reference = logits_of(granularity.apply(copy.deepcopy(base), keep), batches[0])  # float32
    pruned = granularity.apply(base, keep).to(torch.bfloat16)  # in place
    logits = logits_of(pruned, batches[0])
    assert logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits).all())
    assert torch.allclose(logits.float(), reference, atol=0.1, rtol=0.1)  # bf16 rounding only
    if unit == "activation":  # the thresholds stayed on, and zero bf16 activations
        assert surgery.activation_thresholds(pruned) != [None] * len(keep)
        assert granularity.achieved(pruned, batches) > 0.3


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("unit", ["head", "neuron", "weight", "layer"])
@pytest.mark.parametrize("cast_first", [False, True], ids=["masked-then-cast", "cast-then-masked"])
def test_a_masked_model_runs_in_bfloat16_with_the_outputs_of_removal(registry, arch: str, unit: str,
                                                                     cast_first: bool) -> None:
    """Float32 gates and masks on bf16 activations and weights: no dtype error, removal's outputs."""
    model = model_of(arch)
    batches = batches_of(model)
    granularity = granularity_of(registry, unit)
    keep, base = prune(registry, PRUNERS[unit], model, batches)
    removed = logits_of(granularity.apply(copy.deepcopy(base), keep).to(torch.bfloat16), batches[0])
    masked_model = base.to(torch.bfloat16) if cast_first else base
    with granularity.mask(masked_model, keep):
        masked_model.to(torch.bfloat16)
        masked = logits_of(masked_model, batches[0])
    dense = logits_of(masked_model, batches[0])  # the mask is gone with its context
    assert masked.dtype == torch.bfloat16 and bool(torch.isfinite(masked).all())
    error, effect = float((masked - removed).abs().max()), float((dense - removed).abs().max())
    assert error < 0.1 * effect, (error, effect)  # removal's outputs, up to bf16 rounding


@pytest.mark.parametrize("grad", [False, True], ids=["masks", "gradients"])
def test_head_neuron_and_layer_gates_keep_bf16_activations_bf16(grad: bool) -> None:
    """A float32 gate must not promote the projection's bf16 input (the Linear would refuse it).

    Gates that take gradients multiply in float32 (their gradient sums over tokens), then cast back.
    """
    from harness import modeling

    model = tiny_llama().to(torch.bfloat16)
    batch = batches_of(model, 1)[0]
    seen = []
    handles = [module.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
               for module in (*surgery.down_projections(model), *[layer.self_attn.o_proj for layer in
                                                                   surgery.layer_list(model)])]
    gates = [torch.rand(2, 4), torch.rand(64), torch.rand(3, 64), torch.rand(3, 2) + 0.5]
    gates = [gate.requires_grad_(grad) for gate in gates]
    try:
        with surgery.HeadGates(model) as heads, surgery.NeuronGates(model) as neurons, \
                surgery.LayerGates(model) as layers, torch.set_grad_enabled(grad):
            heads.gate = gates[0]
            neurons.gate = gates[1:3]  # one per neuron, one per example and neuron
            layers.gate = gates[3]  # one per example and block
            losses = modeling.per_example_loss(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    assert bool(torch.isfinite(losses).all()) and seen and set(seen) == {torch.bfloat16}
    if grad:
        grads = torch.autograd.grad(losses.sum(), gates)
        assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0)
                   for g in grads)


# --- scorers and pruners under autocast ---------------------------------------------------------------------------


SCORERS = ("block-influence", "gradient", "gradient-neuron", "head-gradient", "l0-gates", "layer-gradient",
           "magnitude", "magnitude-neuron", "random", "random-layer", "random-neuron", "random-weight", "taylor",
           "taylor-neuron", "wanda", "wanda-sequential")


def test_every_built_in_scorer_and_pruner_is_covered(registry) -> None:
    built_in = {role: {n for n, items in registry.by_role[role].items() if items[0].source == "prune-harness"}
                for role in ("scorer", "pruner")}
    assert built_in["scorer"] == set(SCORERS)
    assert built_in["pruner"] == set(PRUNERS.values()) | {"global-unstructured", "structured", "random-unstructured",
                                                          "random-structured", "sparsegpt"}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", SCORERS)
def test_every_scorer_runs_under_bf16_autocast(registry, arch: str, name: str) -> None:
    model = model_of(arch)
    batches = batches_of(model)
    values, expected = score(registry, name, model, batches, autocast=True)
    if isinstance(expected, dict):
        assert set(values) == set(expected)
        assert all(tuple(values[n].shape) == tuple(shape) for n, shape in expected.items())
    else:
        assert tuple(values.shape) == tuple(expected)
    assert_finite(values)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["global-unstructured", "structured", "random-unstructured", "random-structured",
                                  "sparsegpt", *PRUNERS.values()])
def test_every_pruner_runs_under_bf16_autocast_and_its_model_runs_in_bf16(registry, arch: str, name: str) -> None:
    model = model_of(arch)
    batches = batches_of(model)
    keep, base = prune(registry, name, model, batches, autocast=True)
    masks = keep if isinstance(keep, dict) else {"": keep}
    assert all(mask.dtype == torch.bool and mask.device.type == "cpu" for mask in masks.values())
    granularity = granularity_of(registry, record(registry, "pruner", name).granularity)
    pruned = granularity.apply(base, keep).to(torch.bfloat16)
    assert bool(torch.isfinite(logits_of(pruned, batches[0])).all())


def test_random_pruners_draw_the_same_masks_under_autocast(registry) -> None:
    model = tiny_llama()
    batches = batches_of(model)
    for name in ("random-unstructured", "random-structured"):
        plain, _ = prune(registry, name, model, batches)
        autocast, _ = prune(registry, name, model, batches, autocast=True)
        assert all(torch.equal(plain[n], autocast[n]) for n in plain)


# --- float32 statistics under autocast ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_input_statistics_under_autocast_are_float32_sums_of_the_bf16_inputs(arch: str) -> None:
    """XᵀX and Σx² are float32 accumulations of the (bf16) inputs, not bf16 matmuls."""
    model = model_of(arch)
    batches = batches_of(model)
    names = surgery.target_modules(model, ("q", "ffn_out"))
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        calibration.visit_inputs(model, batches, names, lambda name, x: seen[name].append(x.double().clone()))
        stats = calibration.input_statistics(model, batches, names, gram=True)
    for name in names:
        x = torch.cat(seen[name])
        assert stats[name].gram.dtype == stats[name].sum_squares.dtype == torch.float32
        assert stats[name].tokens == x.shape[0]
        torch.testing.assert_close(stats[name].gram.double(), x.T @ x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats[name].sum_squares.double(), x.square().sum(0), rtol=1e-5, atol=1e-5)


def test_sparsegpt_reconstruction_ignores_autocast() -> None:
    from harness_plugins.sparsegpt import reconstruct

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=generator) * torch.linspace(0.1, 3.0, 40)
    weight = torch.randn(12, 40, generator=generator)
    gram = x.T @ x
    plain = reconstruct(weight, gram, SPARSITY, blocksize=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # its OBS updates are matmuls: bf16 unless autocast is off
        autocast = reconstruct(weight, gram, SPARSITY, blocksize=16)
    assert autocast[1].dtype == torch.float32
    assert torch.equal(plain[0], autocast[0]) and torch.equal(plain[1], autocast[1])


@pytest.mark.parametrize("arch", ARCHS)
def test_sparsegpt_under_autocast_is_close_to_float32(registry, arch: str) -> None:
    """Only the calibration activations are bf16-rounded: nearly the same mask and weights as in float32."""
    model = model_of(arch)
    batches = batches_of(model, 3)
    plain_keep, plain = prune(registry, "sparsegpt", model, batches)
    auto_keep, auto = prune(registry, "sparsegpt", model, batches, autocast=True)
    modules, auto_modules = dict(plain.named_modules()), dict(auto.named_modules())
    for name, keep in plain_keep.items():
        assert float((keep == auto_keep[name]).float().mean()) > 0.9, name
        assert auto_modules[name].weight.dtype == torch.float32
        a, b = modules[name].weight.detach(), auto_modules[name].weight.detach()
        assert float((a - b).norm() / a.norm()) < 0.15, name
    ref, out = logits_of(plain, batches[0]), logits_of(auto, batches[0])
    assert torch.allclose(ref, out, atol=0.1, rtol=0.1)
