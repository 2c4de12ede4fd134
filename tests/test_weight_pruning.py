"""Weight and neuron pruning: surgery, scorers and pruners on tiny random models."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHITECTURES, batch_for, tiny_model
from harness_plugins import gradient_scores, magnitude, prune_methods, random_scores

from harness import PruneRequest, ScoreRequest, modeling, surgery

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_llama(seed: int = 0):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "llama", vocab_size=160, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, num_labels=2, pad_token_id=0,
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model("gpt2", vocab_size=160, n_embd=32, n_inner=48, n_layer=2, n_head=4, n_positions=64,
                                  num_labels=2, pad_token_id=0)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def model_for(arch: str):
    return {"llama": tiny_llama, "gpt2": tiny_gpt2}.get(arch, lambda: tiny_model(arch))()


def outputs(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return modeling.logits(model, batch)


def random_keep(widths: tuple[int, ...], fraction: float = 0.5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(len(widths), max(widths), generator=generator) > fraction
    keep[:, 0] = True
    return keep


# --------------------------------------------------------------------------- neuron surgery


@pytest.mark.parametrize("arch", [*ARCHITECTURES, "llama", "gpt2"])
def test_removed_neurons_equal_masked_neurons(arch):
    model = model_for(arch)
    batch = batch_for(model)
    widths = surgery.ffn_widths(model)
    keep = random_keep(widths)
    with surgery.mask_neurons(model, keep):
        masked = outputs(model, batch)
    dense_params = modeling.count_params(model)
    pruned = surgery.remove_neurons(copy.deepcopy(model), keep)
    assert surgery.ffn_widths(pruned) == tuple(int(k) for k in keep.sum(1))
    assert torch.allclose(outputs(pruned, batch), masked, atol=1e-4)
    per_neuron = len(surgery.ffn_layout_of(model).up) * model.config.hidden_size + model.config.hidden_size
    if arch != "llama":
        per_neuron += 1  # the up projection's bias
    assert dense_params - modeling.count_params(pruned) == per_neuron * int((~keep).sum())


@pytest.mark.parametrize("arch", ["bert", "distilbert", "llama", "gpt2"])
def test_removed_neurons_save_and_reload(arch, tmp_path):
    model = model_for(arch)
    batch = batch_for(model)
    pruned = surgery.remove_neurons(copy.deepcopy(model), random_keep(surgery.ffn_widths(model), seed=1))
    pruned = surgery.remove_neurons(pruned, [list(range(w - 1)) for w in surgery.ffn_widths(pruned)])  # twice
    surgery.save_pruned(pruned, tmp_path / "m")
    auto = None
    if arch in ("llama", "gpt2"):
        from transformers import AutoModelForSequenceClassification as auto
    reloaded = surgery.load_pruned(tmp_path / "m", auto)
    assert surgery.ffn_widths(reloaded) == surgery.ffn_widths(pruned)
    assert torch.allclose(outputs(reloaded, batch), outputs(pruned, batch), atol=1e-5)


def test_neuron_removal_validates_before_touching_weights():
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    keep = torch.ones(3, 64, dtype=torch.bool)
    keep[2] = False
    with pytest.raises(ValueError, match="layer 2"):
        surgery.remove_neurons(model, keep)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- weight masks


def test_weight_targets_by_group():
    model = tiny_model()
    assert len(surgery.target_modules(model, "linear")) == 3 * 6
    attention = surgery.target_modules(model, "attention")
    assert attention[:4] == tuple(f"bert.encoder.layer.0.attention.{n}" for n in
                                  ("self.query", "self.key", "self.value", "output.dense"))
    ffn = surgery.target_modules(model, "ffn")
    assert ffn[:2] == ("bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense")
    assert not any("classifier" in n or "embeddings" in n or "pooler" in n for n in surgery.target_modules(model))
    with pytest.raises(ValueError, match="unknown weight group 'mlp'"):
        surgery.parse_groups("attention,mlp")


def test_masks_are_permanent_and_reload(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny_model()
    names = surgery.target_modules(model, "attention")
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(modules[n].weight.shape, generator=generator) > 0.3 for n in names}
    surgery.apply_weight_masks(model, masks)
    state = model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    for name, mask in masks.items():
        assert torch.equal(modules[name].weight != 0, mask)
        assert not hasattr(modules[name], "weight_mask")
    nonzero, total = surgery.count_nonzero(model, names)
    assert nonzero == sum(int(m.sum()) for m in masks.values())
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert surgery.count_nonzero(reloaded, names) == (nonzero, total)
    batch = batch_for(model)
    assert torch.allclose(outputs(reloaded, batch), outputs(model, batch), atol=1e-6)


def test_mask_of_wrong_shape_is_refused():
    model = tiny_model()
    name = surgery.target_modules(model)[0]
    with pytest.raises(ValueError, match="shape"):
        surgery.apply_weight_masks(model, {name: torch.ones(3, 3, dtype=torch.bool)})


# --------------------------------------------------------------------------- scorers


def request(model, targets=(), batches=None, seed=0) -> ScoreRequest:
    batches = batches or [batch_for(model, 4, 7, seed=s) for s in range(3)]
    return ScoreRequest(model, batches, seed, {"offset": 0}, targets=tuple(targets))


def test_magnitude_is_abs_weight_and_neuron_norm():
    model = tiny_model()
    targets = surgery.target_modules(model)
    modules = dict(model.named_modules())
    scores = magnitude.score_weights(request(model, targets))
    assert all(torch.equal(scores[n], modules[n].weight.abs()) for n in targets)
    neurons = magnitude.score_neurons(request(model))
    layer = model.bert.encoder.layer[1]
    expected = (layer.intermediate.dense.weight.pow(2).sum(1) + layer.output.dense.weight.pow(2).sum(0)).sqrt()
    assert torch.allclose(neurons[1], expected, atol=1e-6)


def test_neuron_scores_follow_gpt2_conv1d_orientation():
    """GPT-2 stores weights [in, out]: a neuron is a column of c_fc and a row of c_proj."""
    model = tiny_gpt2()
    mlp = model.transformer.h[1].mlp
    expected = (mlp.c_fc.weight.pow(2).sum(0) + mlp.c_proj.weight.pow(2).sum(1)).sqrt()
    assert torch.allclose(magnitude.score_neurons(request(model))[1], expected, atol=1e-6)
    gradient = gradient_scores.score_gradient_neuron(request(model))
    assert gradient.shape == (2, 48) and (gradient >= 0).all()


def manual_gradients(model, batches, names):
    modules = dict(model.named_modules())
    totals = {n: torch.zeros_like(modules[n].weight) for n in names}
    for batch in batches:
        model.zero_grad()
        modeling.per_example_loss(model, batch).mean().backward()
        for n in names:
            totals[n] += modules[n].weight.grad.abs()
    return {n: t / len(batches) for n, t in totals.items()}


def test_gradient_and_taylor_accumulate_over_batches():
    model = tiny_model()
    targets = surgery.target_modules(model, "attention")
    req = request(model, targets)
    expected = manual_gradients(copy.deepcopy(model), req.batches, targets)
    gradient = gradient_scores.score_gradient(req)
    assert all(torch.allclose(gradient[n], expected[n], atol=1e-6) for n in targets)
    one_batch = gradient_scores.score_gradient(request(model, targets, req.batches[:1]))
    assert not torch.allclose(one_batch[targets[0]], gradient[targets[0]])  # really several batches
    modules = dict(model.named_modules())
    per_batch = [manual_gradients(copy.deepcopy(model), [b], targets) for b in req.batches]
    taylor = gradient_scores.score_taylor(req)
    name = targets[2]
    by_hand = sum((g[name] * modules[name].weight.detach()).abs() for g in per_batch) / 3
    assert torch.allclose(taylor[name], by_hand, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_taylor_neuron_is_per_example_activation_times_gradient():
    model = tiny_model()
    batch = batch_for(model, 3, 7)
    scores = gradient_scores.score_taylor_neuron(request(model, batches=[batch]))
    widths = surgery.ffn_widths(model)
    expected = torch.zeros(len(widths), max(widths))
    for i in range(3):  # one example at a time: |dL_i/dm| summed
        single = {k: v[i : i + 1] for k, v in batch.items()}
        gates = [torch.ones(w, requires_grad=True) for w in widths]
        with surgery.NeuronGates(model) as g:
            g.gate = gates
            loss = modeling.per_example_loss(model, single).sum()
            for index, grad in enumerate(torch.autograd.grad(loss, gates)):
                expected[index] += grad.abs()
    assert torch.allclose(scores, expected / 3, atol=1e-6)


def test_gradient_neuron_sums_weight_gradients():
    model = tiny_model()
    req = request(model)
    scores = gradient_scores.score_gradient_neuron(req)
    names = [n for ups, down in surgery.ffn_module_names(model) for n in (*ups, down)]
    grads = manual_gradients(copy.deepcopy(model), req.batches, names)
    expected = grads[names[0]].sum(1) + grads[names[1]].sum(0)
    assert torch.allclose(scores[0], expected, atol=1e-6)


def test_random_weight_and_neuron_scores_are_seeded():
    model = tiny_model()
    targets = surgery.target_modules(model)
    a = random_scores.score_weights(request(model, targets, seed=1))
    b = random_scores.score_weights(request(model, targets, seed=1))
    c = random_scores.score_weights(request(model, targets, seed=2))
    assert all(torch.equal(a[n], b[n]) for n in targets) and not torch.equal(a[targets[0]], c[targets[0]])
    pruned = surgery.remove_neurons(copy.deepcopy(model), [[0, 1], list(range(64)), [5]])
    neurons = random_scores.score_neurons(request(pruned))
    assert neurons.shape == (3, 64) and bool((neurons[0, 2:] < 0).all()) and bool((neurons[1] >= 0).all())


# --------------------------------------------------------------------------- pruners


def weight_scores(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"a": torch.rand(40, 30, generator=generator), "b": 3 * torch.rand(20, 30, generator=generator)}


def zeros_fraction(masks) -> float:
    return sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_unstructured_layer_and_global(sparsity):
    scores = weight_scores()
    layer = prune_methods.unstructured(PruneRequest(scores, sparsity))
    for name, mask in layer.items():
        assert int((~mask).sum()) == round(sparsity * mask.numel())
        assert scores[name][~mask].max() <= scores[name][mask].min()
    glob = prune_methods.global_unstructured(PruneRequest(scores, sparsity))
    assert abs(zeros_fraction(glob) - sparsity) <= 1 / 2400
    kept = torch.cat([scores[n][glob[n]] for n in scores])
    dropped = torch.cat([scores[n][~glob[n]] for n in scores])
    assert dropped.max() <= kept.min()
    assert zeros_fraction({"b": glob["b"]}) < zeros_fraction({"a": glob["a"]})  # b's scores are larger


def test_global_unstructured_normalized_by_module_mean_ignores_scale():
    """A module whose importance is 1000x smaller everywhere is not emptied first once scores are normalised."""
    scores = weight_scores()
    scaled = {"a": scores["a"], "b": scores["b"] / 1000}
    raw = prune_methods.global_unstructured(PruneRequest(scaled, 0.3))
    assert zeros_fraction({"b": raw["b"]}) > 0.85  # the raw ranking empties b
    normalized = prune_methods.global_unstructured(PruneRequest(scaled, 0.3, {"normalize": "mean"}))
    assert abs(zeros_fraction(normalized) - 0.3) <= 1 / 2400
    unscaled = prune_methods.global_unstructured(PruneRequest(scores, 0.3, {"normalize": "mean"}))
    assert all(torch.equal(normalized[n], unscaled[n]) for n in scores)  # invariant to each module's scale
    assert 0.15 < zeros_fraction({"b": normalized["b"]}) < 0.45


def test_lamp_scores_match_their_definition():
    scores = torch.tensor([[3.0, 1.0], [2.0, 4.0]])
    # sorted squares 1, 4, 9, 16; each over the sum of itself and all larger ones
    expected = torch.tensor([[9 / 25, 1 / 30], [4 / 29, 16 / 16]], dtype=torch.float64)
    assert prune_methods.lamp(scores).dtype == torch.float64  # float32 ratios of big modules underflow to ties
    torch.testing.assert_close(prune_methods.lamp(scores), expected)
    torch.testing.assert_close(prune_methods.lamp(scores * 1000), expected)  # scale-free


def test_global_unstructured_lamp_is_exact_scale_free_and_keeps_every_module():
    scores = weight_scores()
    scaled = {"a": scores["a"], "b": scores["b"] / 1000}
    for sparsity in (0.1, 0.5, 0.9):
        masks = prune_methods.global_unstructured(PruneRequest(scaled, sparsity, {"normalize": "lamp"}))
        assert abs(zeros_fraction(masks) - sparsity) <= 1 / 2400
        unscaled = prune_methods.global_unstructured(PruneRequest(scores, sparsity, {"normalize": "lamp"}))
        assert all(torch.equal(masks[n], unscaled[n]) for n in scores)
        assert all(bool(mask.view(-1)[scores[n].argmax()]) for n, mask in masks.items())  # its top entry stays
        for name, mask in masks.items():  # within a module, whatever is kept outranks whatever is zeroed
            assert scores[name][mask].min() >= scores[name][~mask].max()


def test_structured_prunes_rows_by_ln_norm():
    scores = weight_scores()
    masks = prune_methods.structured(PruneRequest(scores, 0.25, {"n": 1}))
    for name, mask in masks.items():
        rows = mask.all(1)
        assert torch.equal(mask, rows[:, None].expand_as(mask))  # whole rows
        assert int((~rows).sum()) == round(0.25 * len(rows))
        norms = scores[name].sum(1)
        assert norms[~rows].max() <= norms[rows].min()


def test_random_pruners_are_seeded_and_exact():
    scores = weight_scores()
    a = prune_methods.random_unstructured(PruneRequest(scores, 0.4, seed=1))
    b = prune_methods.random_unstructured(PruneRequest(scores, 0.4, seed=1))
    c = prune_methods.random_unstructured(PruneRequest(scores, 0.4, seed=2))
    assert all(torch.equal(a[n], b[n]) for n in scores) and not torch.equal(a["a"], c["a"])
    assert all(int((~m).sum()) == round(0.4 * m.numel()) for m in a.values())
    rows = prune_methods.random_structured(PruneRequest(scores, 0.5, seed=1))
    assert all(int((~m.all(1)).sum()) == round(0.5 * len(m)) for m in rows.values())


def test_neuron_pruner_global_keeps_a_minimum_per_layer():
    scores = torch.rand(3, 10, generator=torch.Generator().manual_seed(0))
    scores[2] *= 0.001  # layer 2 is the least important everywhere
    scores[1, 8:] = -1.0  # an already pruned layer: two neurons absent
    keep = prune_methods.neurons(PruneRequest(scores, 0.5, {"scope": "global", "min_per_layer": 2}))
    assert int(keep.sum()) == 28 - round(0.5 * 28)
    assert int(keep[2].sum()) == 2 and not keep[1, 8:].any()
    layer = prune_methods.neurons(PruneRequest(scores, 0.5, {"scope": "layer"}))
    assert [int(k) for k in layer.sum(1)] == [5, 4, 5]


# --------------------------------------------------------------------------- end to end


def test_bench_weight_and_neuron_rows_report_measured_sparsity(tiny_model_dir, tmp_path):
    import pandas as pd

    from harness.cli import main

    out = tmp_path / "out"
    plugins = "magnitude,taylor,taylor-neuron,random-neuron,unstructured,global-unstructured,random-unstructured,neurons,"
    plugins += "finetune"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--sparsities", "0.5,0.9", "--out", str(out),
            "--plugins", plugins, "--targets", "attention,ffn_in", "--train-steps", "2", "--calib-examples", "8",
            "--latency-batch", "2", "--latency-tokens", "8", "--eval-limit", "16", "--no-progress"]
    assert main(argv) == 0
    frame = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
    assert (frame["status"] == "ok").all()
    methods = set(zip(frame["scorer"], frame["pruner"]))
    assert ("none", "random-unstructured") in methods and ("magnitude", "neurons") not in methods
    assert len(frame) == 1 + 2 * (3 * 2 + 1 + 2)  # dense + sparsities × ((magnitude, taylor, random-weight baseline)
    # × 2 weight pruners + random-unstructured + neuron pairs)
    weights = frame[frame["granularity"] == "weight"]
    assert set(weights["targets"]) == {"attention,ffn_in"}
    assert (abs(weights["achieved_sparsity"] - weights["sparsity"]) <= 0.005).all()
    assert (weights["params"] == frame["params"].iloc[0]).all()  # zeros are not removed parameters
    assert (weights["nonzero_params"] < frame["nonzero_params"].iloc[0]).all()
    neurons = frame[frame["granularity"] == "neuron"]
    assert (abs(neurons["achieved_sparsity"] - neurons["sparsity"]) <= 0.02).all()
    assert (neurons["params"] < frame["params"].iloc[0]).all() and (neurons["gflops"] < frame["gflops"].iloc[0]).all()
    dense = frame[frame["sparsity"] == 0].iloc[0]
    assert dense["achieved_sparsity"] == 0 and dense["granularity"] == "none"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weight_scores_that_cannot_be_ranked_are_rejected(bad: float):
    from types import SimpleNamespace

    from harness.checks import checked_scores as _checked_scores

    scorer = SimpleNamespace(name="broken")
    scores = {"a": torch.ones(2, 3)}
    assert torch.equal(_checked_scores(scorer, scores, {"a": (2, 3)})["a"], scores["a"])
    scores["a"][1, 2] = bad
    with pytest.raises(ValueError, match="broken.*a scores are not all finite"):
        _checked_scores(scorer, scores, {"a": (2, 3)})
    heads = torch.zeros(2, 4)
    heads[0, 0] = float("inf")  # a head score may pin a unit; NaN never ranks
    assert _checked_scores(scorer, heads, (2, 4))[0, 0] == float("inf")
    heads[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _checked_scores(scorer, heads, (2, 4))
