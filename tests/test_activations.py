"""Activation sparsity: FFN hidden-activation statistics, TEAL thresholds (``teal``), ReLU swaps (``relufy``)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from conftest import tiny_config
from harness_plugins import activations, relufy
from test_layers import batches, forward, real, tiny

from harness import PruneRequest, TrainRequest, conformance, surgery
from harness.granularities.activations import ACTIVATION

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ("bert", "gpt2", "llama")
PADS = (0, 2, 0, 3, 1, 0, 4, 0)


def tiny_distilbert(seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config("distilbert")).eval()


def model_of(arch: str) -> torch.nn.Module:
    return tiny_distilbert() if arch == "distilbert" else tiny(arch)


def hand_activations(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each layer's FFN hidden activation at real tokens, from hooks on the activation functions themselves."""
    arch, found, handles = model.config.model_type, {}, []
    blocks = surgery.layer_list(model)

    def keep(key: tuple[int, str]):
        def hook(module, args, output):
            found[key] = output

        return hook

    paths = {"bert": {"act": "intermediate.intermediate_act_fn"}, "gpt2": {"act": "mlp.act"},
             "distilbert": {"act": "ffn.activation"}, "llama": {"act": "mlp.act_fn", "up": "mlp.up_proj"}}[arch]
    for index, block in enumerate(blocks):
        handles += [block.get_submodule(path).register_forward_hook(keep((index, key))) for key, path in paths.items()]
    try:
        forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    mask = batch["attention_mask"].bool()
    return [(found[(i, "act")] * found[(i, "up")] if arch == "llama" else found[(i, "act")])[mask]
            for i in range(len(blocks))]


# --- statistics ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [*ARCHS, "distilbert"])
@pytest.mark.parametrize("activation", ["default", "relu"])
def test_stats_equal_a_hand_count_from_hooks_on_the_activation(arch: str, activation: str) -> None:
    model, [batch] = model_of(arch), batches(1, pads=PADS[:4])
    if activation == "relu":
        surgery.set_ffn_activation(model, "relu")
    eps = 0.05
    stats = surgery.ffn_activation_stats(model, [batch], eps=eps)
    hand = hand_activations(model, batch)
    assert len(stats) == len(hand) == surgery.num_layers(model)
    for stat, h in zip(stats, hand):
        assert stat.tokens == int(batch["attention_mask"].sum()) and stat.values == h.numel()
        assert stat.zeros == int((h == 0).sum()) and stat.near_zeros == int((h.abs() <= eps).sum())
    if activation == "relu":
        assert all(0.2 < s.zero_fraction < 0.8 for s in stats)  # ReLU: about half the pre-activations are < 0
    elif arch != "llama":  # SiLU(gate) * up is exactly 0 only by accident; GELU never
        assert all(s.zeros == 0 and s.near_zero_fraction > 0 for s in stats)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_is_left_out_of_the_stats(arch: str) -> None:
    model = surgery.set_ffn_activation(tiny(arch), "relu")
    [padded] = batches(1, pads=(0, 2, 1, 3))
    alone = []
    for row in range(4):  # each example on its own, without padding
        length = int(padded["attention_mask"][row].sum())
        alone.append({k: v[row:row + 1, :length] if v.dim() == 2 else v[row:row + 1] for k, v in padded.items()})
    together = surgery.ffn_activation_stats(model, [padded])
    apart = surgery.ffn_activation_stats(model, alone)
    assert [s.tokens for s in together] == [s.tokens for s in apart] == [4 * 7 - 6] * 4
    assert [(s.zeros, s.values) for s in together] == [(s.zeros, s.values) for s in apart]
    noisy = {**padded, "input_ids": padded["input_ids"].masked_fill(padded["attention_mask"] == 0, 7)}
    assert surgery.ffn_activation_stats(model, [noisy]) == together


# --- thresholds ------------------------------------------------------------------------------------------------


def test_threshold_for_puts_the_cut_between_ranks_and_keeps_ties() -> None:
    values = torch.tensor([0.4, 0.1, 0.3, 0.2])
    assert surgery.threshold_for(values, 0.5) == pytest.approx(0.25)  # between the 2nd and 3rd smallest
    assert surgery.threshold_for(values, 0.0) == 0.0 and surgery.threshold_for(values, 1.0) == float("inf")
    zeros = torch.tensor([0.0, 0.0, 0.0, 0.5])  # ReLU's ties: already sparser than asked, nothing more is cut
    assert surgery.threshold_for(zeros, 0.5) == 0.0
    with pytest.raises(ValueError, match="sparsity"):
        surgery.threshold_for(values, 1.5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("target", [0.25, 0.5, 0.75, 0.9])
def test_calibrated_thresholds_hit_the_target_on_held_out_batches(arch: str, target: float) -> None:
    model = tiny(arch)
    calibration, held_out = batches(6, pads=PADS, seed=0), batches(6, pads=PADS, seed=1)
    thresholds = surgery.calibrate_activation_thresholds(model, calibration, target)
    surgery.set_activation_thresholds(model, thresholds)
    per_layer = [s.zero_fraction for s in surgery.ffn_activation_stats(model, held_out, eps=0.0)]
    assert all(abs(f - target) <= 0.02 for f in per_layer), per_layer  # within ±2 points, every layer
    assert abs(ACTIVATION.achieved(model, held_out) - target) <= 0.02


def test_a_sampled_quantile_still_hits_the_target() -> None:
    model = tiny("bert")
    calibration, held_out = batches(6, pads=PADS, seed=0), batches(6, pads=PADS, seed=1)
    sampled = surgery.calibrate_activation_thresholds(model, calibration, 0.5, max_values=2000, seed=3)
    assert sampled == surgery.calibrate_activation_thresholds(model, calibration, 0.5, max_values=2000, seed=3)
    assert sampled != surgery.calibrate_activation_thresholds(model, calibration, 0.5)  # a sample, not every value
    surgery.set_activation_thresholds(model, sampled)
    assert abs(ACTIVATION.achieved(model, held_out) - 0.5) <= 0.03


@pytest.mark.parametrize("arch", ARCHS)
def test_thresholds_survive_deepcopy_and_pickle_and_can_be_removed(arch: str) -> None:
    model, [batch] = tiny(arch), batches(1)
    dense = forward(model, batch)
    surgery.set_activation_thresholds(model, surgery.calibrate_activation_thresholds(model, batches(2), 0.6))
    thresholded = forward(model, batch)
    assert not torch.allclose(real(thresholded, batch), real(dense, batch), atol=1e-5)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert surgery.activation_thresholds(twin) == surgery.activation_thresholds(model)
        assert torch.equal(forward(twin, batch), thresholded)
    assert not any(surgery.ACTIVATION_THRESHOLD_KEY in key for key in model.state_dict())  # never saved
    surgery.set_activation_thresholds(model, surgery.activation_thresholds(model))  # again: one hook per module
    assert torch.equal(forward(model, batch), thresholded)
    surgery.remove_activation_thresholds(model)
    assert surgery.activation_thresholds(model) == [None] * 4 and torch.equal(forward(model, batch), dense)


@pytest.mark.parametrize("arch", ARCHS)
def test_sparsity_zero_changes_nothing(arch: str) -> None:
    model, [batch] = tiny(arch), batches(1)
    dense = forward(model, batch)
    thresholds = surgery.calibrate_activation_thresholds(model, batches(2), 0.0)
    assert thresholds == [0.0] * 4
    surgery.set_activation_thresholds(model, thresholds)
    assert torch.equal(forward(model, batch), dense)
    keep = activations.compute_mask(PruneRequest(torch.zeros(4), 0.0, model=model, batches=batches(2)))
    assert keep.tolist() == [True] * 4 and torch.equal(forward(ACTIVATION.apply(model, keep), batch), dense)


def test_bad_thresholds_are_refused() -> None:
    model = tiny("bert")
    with pytest.raises(ValueError, match="3 thresholds"):
        surgery.set_activation_thresholds(model, [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match=">= 0"):
        surgery.set_activation_thresholds(model, [0.1, -1.0, None, 0.1])
    assert surgery.activation_thresholds(model) == [None] * 4


# --- the granularity and the pruner ----------------------------------------------------------------------------


def test_the_granularity_keeps_layers_dense_where_the_mask_keeps_them() -> None:
    model, held_out = tiny("gpt2"), batches(2, seed=1)
    assert ACTIVATION.shapes(model, ()) == (4,) and ACTIVATION.scope(model, ()) == ()
    assert ACTIVATION.config_shapes(model.config) == (4,) and ACTIVATION.config_shapes(tiny_config("bert")) == (3,)
    keep = activations.compute_mask(PruneRequest(torch.zeros(4), 0.5, model=model, batches=batches(4), seed=1))
    assert keep.tolist() == [False] * 4 and None not in surgery.activation_thresholds(model)
    ACTIVATION.apply(model, torch.tensor([True, False, True, False]))
    assert [t is None for t in surgery.activation_thresholds(model)] == [True, False, True, False]
    fractions = [s.zero_fraction for s in surgery.ffn_activation_stats(model, held_out, eps=0.0)]
    assert fractions[0] == fractions[2] == 0.0 and all(abs(fractions[i] - 0.5) < 0.05 for i in (1, 3))
    with pytest.raises(ValueError, match="shape"):
        ACTIVATION.apply(model, torch.ones(3, dtype=torch.bool))


def test_teal_logs_every_threshold_and_dry_runs_without_a_model() -> None:
    model, logged = tiny("llama"), {}
    request = PruneRequest(torch.zeros(4), 0.5, model=model, batches=batches(2),
                           log=lambda name, value, step: logged.__setitem__(name, value))
    activations.compute_mask(request)
    assert logged == {f"teal/threshold_{i}": t for i, t in enumerate(surgery.activation_thresholds(model))}
    assert activations.compute_mask(PruneRequest(torch.zeros(4), 0.5)).shape == (4,)  # planning's dry run
    with pytest.raises(ValueError, match="calibration batches"):
        activations.compute_mask(PruneRequest(torch.zeros(4), 0.5, model=tiny("llama")))


def test_the_new_records_pass_conformance() -> None:
    conformance.check_plugin(ACTIVATION)
    [pruner] = activations.harness_pruners()
    [adapter] = relufy.harness_adapters()
    conformance.check_plugin(pruner)
    conformance.check_plugin(adapter)
    assert pruner.granularity == "activation" and not pruner.uses_scores and pruner.updates_model
    assert conformance.granularity_of("activation") == ACTIVATION  # registered through the entry points


# --- relufy ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [*ARCHS, "distilbert"])
def test_relufy_swaps_the_activation_and_it_reloads(tmp_path, arch: str) -> None:
    from transformers import AutoModelForSequenceClassification

    model, [batch] = model_of(arch), batches(1)
    dense, before = forward(model, batch), surgery.ffn_activation_name(model)
    surgery.set_ffn_activation(model, "relu")
    assert before != "relu" and surgery.ffn_activation_name(model) == "relu"
    swapped = forward(model, batch)
    assert not torch.allclose(swapped, dense, atol=1e-5)
    assert all(s.zero_fraction > 0.2 for s in surgery.ffn_activation_stats(model, [batch]))
    model.save_pretrained(tmp_path / "relu")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "relu").eval()
    assert surgery.ffn_activation_name(loaded) == "relu"
    assert torch.allclose(forward(loaded, batch), swapped, atol=1e-6)
    with pytest.raises(ValueError, match="unknown activation"):
        surgery.set_ffn_activation(model, "relu7")


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_relufy_trains_the_relu_model(arch: str) -> None:
    model, train = tiny(arch), batches(4, seed=2)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    options = dict(relufy.harness_adapters()[0].options)
    result = relufy.train(TrainRequest(model, iter(train), 4, 1e-3, 0, options))
    assert result.steps == 4 and result.model is model and result.trainable_params > 0
    assert dict(result.config) == {"activation": "relu", "replaced": "gelu" if arch == "bert" else "silu"}
    assert surgery.ffn_activation_name(model) == "relu"
    assert any(not torch.equal(weights[k], v) for k, v in model.state_dict().items())  # it trained


# --- end to end ------------------------------------------------------------------------------------------------


def test_a_bench_with_teal_measures_activation_sparsity_on_the_validation_data(tmp_path, tiny_model_dir) -> None:
    import harness

    result = harness.run(models=[str(tiny_model_dir("bert"))], plugins=["finetune", "relufy", "teal"],
                         out=tmp_path / "out", sparsities=[0.3, 0.7], train_steps=2, calib_examples=32,
                         eval_limit=64, latency_batch=2, latency_tokens=8, isolation="none", progress=False)
    rows = result.rows
    assert result.ok and (rows["status"] == "ok").all(), rows["error"].tolist()
    assert len(rows) == 2 * 3 and set(rows["adapter"]) == {"finetune", "relufy"}
    pruned = rows[rows["pruner"] == "teal"]
    assert (pruned["granularity"] == "activation").all() and (pruned["scorer"] == "none").all()
    gelu, relu = pruned[pruned["adapter"] == "finetune"], pruned[pruned["adapter"] == "relufy"]
    assert ((gelu["achieved_sparsity"] - gelu["sparsity"]).abs() <= 0.05).all(), gelu["achieved_sparsity"].tolist()
    assert (relu["achieved_sparsity"] >= relu["sparsity"] - 0.05).all()  # ReLU's own zeros may exceed the target
    dense = rows[rows["pruner"] == "none"]
    assert (dense["achieved_sparsity"] == 0).all() and (pruned["params"] == dense["params"].iloc[0]).all()
    for _, row in pruned.iterrows():
        extras = json.loads(row["extras"])
        assert {f"teal/threshold_{i}" for i in range(3)} <= set(extras) and "latency_kernel" in extras
    assert '"activation": "relu"' in dense[dense["adapter"] == "relufy"]["adapter_config"].iloc[0]

    assert not pruned["updates_weights"].astype(bool).any()  # thresholds at run time: no kept weight changed


def test_a_cached_relufy_fine_tune_comes_back_with_relu(tmp_path, tiny_model_dir) -> None:
    """The cache holds weights; the FFN activation the adapter swapped is restored before they are loaded."""
    import harness

    args = dict(models=[str(tiny_model_dir("bert"))], plugins=["relufy", "teal"], sparsities=[0.4], train_steps=2,
                calib_examples=32, eval_limit=64, latency_batch=2, latency_tokens=8, isolation="none",
                progress=False)
    fresh = harness.run(out=tmp_path / "a", **args)
    cached = harness.run(out=tmp_path / "b", **args)  # new --out: every cell runs again from the cached fine-tune
    assert fresh.counts["fine_tunes_run"] == 1 and cached.counts["fine_tunes_run"] == 0
    columns = ["run_id", "score", "achieved_sparsity", "extras"]
    assert fresh.rows[columns].values.tolist() == cached.rows[columns].values.tolist()
