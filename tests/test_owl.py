"""OWL layer-wise sparsity (``unstructured.owl``): ratios from outliers, their weighted mean exactly the target."""

from __future__ import annotations

import json

import pytest
import torch
from harness_plugins import owl, prune_methods
from harness_plugins.prune_methods import UnstructuredOptions
from test_calibration import tiny_gpt2, tiny_llama

from harness import PruneRequest, conformance, surgery
from harness.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


def layered_scores(outliers: dict[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Layers of different sizes; layer ``l`` has ``outliers[l]`` scores of 100 among scores in [0.5, 1.5)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {0: [(8, 16), (16, 8)], 1: [(8, 32)], 2: [(4, 8), (8, 4), (4, 4)], 3: [(16, 16)]}
    scores = {}
    for layer, count in outliers.items():
        for index, shape in enumerate(shapes[layer]):
            scores[f"model.layers.{layer}.proj{index}"] = torch.rand(shape, generator=generator) + 0.5
        scores[f"model.layers.{layer}.proj0"].view(-1)[:count] = 100.0
    return scores


def weighted_by_hand(ratios: dict[int, float], scores: dict[str, torch.Tensor]) -> float:
    sizes = {layer: 0 for layer in ratios}
    for name, s in scores.items():
        sizes[int(name.split(".")[2])] += s.numel()
    return sum(ratios[layer] * size for layer, size in sizes.items()) / sum(sizes.values())


@pytest.mark.parametrize("model", [conformance.tiny_bert, tiny_gpt2, tiny_llama])
def test_layer_index_comes_from_the_module_name(model) -> None:
    names = surgery.target_modules(model())
    assert sorted({owl.layer_of(name) for name in names}) == [0, 1]
    assert list(owl.layers(dict.fromkeys(names))) == [0, 1]
    with pytest.raises(ValueError, match="module 'pooler.dense' has no layer index"):
        owl.layer_of("pooler.dense")


def test_outlier_ratios_by_hand() -> None:
    scores = layered_scores({0: 3, 1: 0, 2: 1, 3: 8})
    ratios = owl.outlier_ratios(scores, 5.0)
    assert ratios == {0: 3 / 256, 1: 0.0, 2: 1 / 80, 3: 8 / 256}
    assert owl.outlier_ratios(scores, 200.0) == dict.fromkeys(range(4), 0.0)  # nothing is 200x the mean


@pytest.mark.parametrize("spread", [0.0, 0.08, 0.3, 0.5])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.7, 0.9])
def test_weighted_mean_is_exactly_the_target(sparsity: float, spread: float) -> None:
    scores = layered_scores({0: 3, 1: 0, 2: 1, 3: 8})
    cap = 1 - 1 / 4
    if sparsity > cap:
        return
    ratios = owl.layer_sparsities(scores, sparsity, 5.0, spread, cap)
    assert weighted_by_hand(ratios, scores) == pytest.approx(sparsity, abs=1e-12)
    assert owl.weighted_mean(ratios, scores) == pytest.approx(sparsity, abs=1e-12)
    assert all(0.0 <= r <= cap for r in ratios.values())


def test_more_outliers_lower_sparsity_and_the_spread_is_two_lambda() -> None:
    scores = layered_scores({0: 3, 1: 0, 2: 1, 3: 8})  # shares: 8/256 > 1/80 > 3/256 > 0
    ratios = owl.layer_sparsities(scores, 0.5, 5.0, 0.08, 0.99)
    shares = owl.outlier_ratios(scores, 5.0)
    by_share = sorted(ratios, key=lambda layer: shares[layer])
    assert [round(ratios[layer], 9) for layer in by_share] == sorted((round(r, 9) for r in ratios.values()),
                                                                      reverse=True)
    assert ratios[3] < ratios[2] < ratios[0] < ratios[1]
    assert max(ratios.values()) - min(ratios.values()) == pytest.approx(0.16, abs=1e-12)
    d = {layer: (shares[layer] - shares[1]) / (shares[3] - shares[1]) for layer in shares}  # normalized D
    assert all(ratios[a] - ratios[b] == pytest.approx(-0.16 * (d[a] - d[b]), abs=1e-12) for a in d for b in d)


def test_lambda_zero_or_equal_outliers_is_uniform() -> None:
    scores = layered_scores({0: 3, 1: 0, 2: 1, 3: 8})
    assert owl.layer_sparsities(scores, 0.6, 5.0, 0.0, 0.99) == pytest.approx(dict.fromkeys(range(4), 0.6))
    none = layered_scores({0: 0, 1: 0, 2: 0, 3: 0})
    assert owl.layer_sparsities(none, 0.6, 5.0, 0.3, 0.99) == pytest.approx(dict.fromkeys(range(4), 0.6))


def test_clipped_ratios_still_average_to_the_target() -> None:
    scores = layered_scores({0: 3, 1: 0, 2: 1, 3: 8})
    low = owl.layer_sparsities(scores, 0.1, 5.0, 0.5, 0.95)
    assert low[3] == 0.0 and weighted_by_hand(low, scores) == pytest.approx(0.1, abs=1e-12)
    high = owl.layer_sparsities(scores, 0.9, 5.0, 0.5, 0.95)
    assert high[1] == 0.95 and weighted_by_hand(high, scores) == pytest.approx(0.9, abs=1e-12)
    with pytest.raises(ValueError, match="sparsity 0.96 is above the 0.95 OWL lets any layer reach"):
        owl.layer_sparsities(scores, 0.96, 5.0, 0.5, 0.95)


def model_scores(model: torch.nn.Module, outlier_layer: int) -> dict[str, torch.Tensor]:
    """Random scores with 5% outliers (50x) in one layer's modules."""
    generator = torch.Generator().manual_seed(3)
    modules, scores = dict(model.named_modules()), {}
    for name in surgery.target_modules(model):
        s = torch.rand(modules[name].weight.shape, generator=generator) + 0.5
        if owl.layer_of(name) == outlier_layer:
            s.view(-1)[torch.randperm(s.numel(), generator=generator)[: s.numel() // 20]] = 50.0
        scores[name] = s
    return scores


def owl_masks(model: torch.nn.Module, scores: dict, group: str = "module", **extra: object):
    logged: dict[str, float] = {}
    options = {"owl": True, "group": group, **extra}
    request = PruneRequest(scores, 0.5, options, model=model, log=lambda name, value, step: logged.update({name: value}))
    return prune_methods.unstructured(request), logged


@pytest.mark.parametrize("group", ["module", "row"])
def test_pruner_prunes_each_layer_at_its_ratio_and_logs_them(group: str) -> None:
    model = tiny_gpt2()  # Conv1D: rows are columns
    scores = model_scores(model, outlier_layer=1)
    masks, logged = owl_masks(model, scores, group)
    ratios = {int(key.rsplit("layer", 1)[1]): value for key, value in logged.items()}
    assert set(logged) == {"owl/sparsity_layer0", "owl/sparsity_layer1"} and ratios[1] < 0.5 < ratios[0]
    assert ratios[0] - ratios[1] == pytest.approx(0.16) and owl.weighted_mean(ratios, scores) == pytest.approx(0.5)
    for name, mask in masks.items():
        ratio = ratios[owl.layer_of(name)]
        if group == "module":
            assert int((~mask).sum()) == round(ratio * mask.numel()), name
        else:
            width = mask.shape[0]
            assert (~mask).sum(0).tolist() == [round(ratio * width)] * mask.shape[1], name
    removed = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert removed == pytest.approx(0.5, abs=1e-3)  # per-module rounding only


def test_owl_off_is_uniform_and_logs_nothing() -> None:
    model = conformance.tiny_bert()
    scores = model_scores(model, outlier_layer=0)
    logged: list[str] = []
    masks = prune_methods.unstructured(PruneRequest(scores, 0.5, {}, model=model, log=lambda n, v, s: logged.append(n)))
    assert not logged and all(int((~m).sum()) == m.numel() // 2 for m in masks.values())


def test_owl_and_a_pattern_do_not_combine() -> None:
    from harness.plugins import load_registry, parse_options

    with pytest.raises(ValueError, match="owl picks a sparsity per layer while pattern N:M fixes it"):
        UnstructuredOptions(owl=True, pattern="2:4")
    with pytest.raises(UsageError, match="^options of unstructured: owl picks a sparsity per layer"):
        parse_options(["unstructured.owl=true", "unstructured.pattern=2:4"], load_registry())


def test_owl_options_are_typed_with_ranges() -> None:
    from harness.options import describe

    (record,) = [p for p in prune_methods.harness_pruners() if p.name == "unstructured"]
    specs = {spec.name: spec for spec in describe(record)}
    assert [(specs[k].type, specs[k].default) for k in ("owl", "owl_m", "owl_lambda", "pattern")] == [
        ("bool", False), ("float", 5.0), ("float", 0.08), ("str", "")]
    assert (specs["owl_m"].low, specs["owl_lambda"].low, specs["owl_lambda"].high) == (1.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="owl_lambda is above its maximum 0.5"):
        UnstructuredOptions(owl_lambda=0.6)


def test_bench_writes_the_layer_ratios_to_extras(tiny_model_dir, tmp_path) -> None:
    import harness

    options = ["unstructured.owl=true", "unstructured.group=row", "unstructured.owl_lambda=0.2"]
    result = harness.run(models=[str(tiny_model_dir("bert"))], plugins=["wanda", "unstructured"], out=tmp_path / "out",
                         sparsities=[0.5], train_steps=2, calib_examples=8, eval_limit=16, latency_batch=2,
                         latency_tokens=8, isolation="none", progress=False, baselines=False, options=options)
    pruned = result.rows[result.rows["scorer"] == "wanda"].iloc[0]
    assert pruned["status"] == "ok", pruned["error"]
    extras = json.loads(pruned["extras"])
    ratios = {int(k.rsplit("layer", 1)[1]): v for k, v in extras.items() if k.startswith("owl/")}
    assert sorted(ratios) == [0, 1, 2] and all(0 <= r < 1 for r in ratios.values())
    assert max(ratios.values()) - min(ratios.values()) == pytest.approx(0.4, abs=1e-5)  # 2 * owl_lambda
    assert sum(ratios.values()) / 3 == pytest.approx(0.5, abs=1e-5)  # equal layers: the plain mean
    rows = {32: 4 * 32 + 64, 64: 32}  # rows of each input width per layer: q, k, v, o, ffn_in; ffn_out
    removed = sum(count * round(r * width) for r in ratios.values() for width, count in rows.items())
    assert pruned["achieved_sparsity"] == pytest.approx(removed / (3 * 8192), abs=1e-6)  # per-row rounding only
