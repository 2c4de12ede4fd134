"""``unstructured.pattern=N:M``: N of every M consecutive inputs of each output kept, on Linear and Conv1D."""

from __future__ import annotations

import pytest
import torch
from harness_plugins import prune_methods
from harness_plugins.prune_methods import UnstructuredOptions
from test_calibration import tiny_gpt2, tiny_llama
from test_row_group import random_scores

from harness import PruneRequest, conformance, surgery
from harness.errors import UsageError
from harness.granularities.weights import WEIGHT

pytestmark = pytest.mark.usefixtures("one_thread")


def pattern_masks(model: torch.nn.Module, scores: dict, pattern: str, sparsity: float) -> dict[str, torch.Tensor]:
    return prune_methods.unstructured(PruneRequest(scores, sparsity, {"pattern": pattern}, model=model))


def blocks(t: torch.Tensor, m: int, conv1d: bool) -> torch.Tensor:
    """``[out, in / m, m]``: each output's inputs in consecutive blocks of ``m``."""
    rows = t.T if conv1d else t
    return rows.reshape(rows.shape[0], -1, m)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8), (1, 2)])
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_exactly_n_of_every_m_inputs_and_the_best_ones(arch: str, n: int, m: int) -> None:
    model = {"bert": conformance.tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}[arch]()
    scores = random_scores(model, seed=n * 10 + m)
    masks = pattern_masks(model, scores, f"{n}:{m}", 1 - n / m)
    assert set(masks) == set(scores)
    conv1d = arch == "gpt2"
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == scores[name].shape
        kept, ranked = blocks(mask, m, conv1d), blocks(scores[name], m, conv1d)
        assert bool((kept.sum(-1) == n).all()), name  # every block of every output row
        worst_kept = ranked.masked_fill(~kept, torch.inf).min(-1).values
        best_gone = ranked.masked_fill(kept, -torch.inf).max(-1).values
        assert bool((worst_kept > best_gone).all()), name
        assert float((~mask).float().mean()) == pytest.approx(1 - n / m)


def test_blocks_run_along_the_input_axis_of_conv1d() -> None:
    model = tiny_gpt2()
    name = "transformer.h.0.mlp.c_proj"  # Conv1D [in=48, out=32]
    scores = {name: torch.arange(48.0)[:, None].expand(48, 32).clone()}  # later inputs matter more
    mask = pattern_masks(model, scores, "2:4", 0.5)[name]
    assert mask[:, 0].tolist() == [False, False, True, True] * 12 and bool((mask == mask[:, :1]).all())


def test_ties_in_a_block_go_to_the_lower_position() -> None:
    model = conformance.tiny_bert(layers=1)
    name = "bert.encoder.layer.0.output.dense"
    mask = pattern_masks(model, {name: torch.ones(32, 32)}, "2:4", 0.5)[name]
    assert mask[0].tolist() == [False, False, True, True] * 8 and bool((mask == mask[:1]).all())


def test_group_has_no_effect_on_a_pattern() -> None:
    model = tiny_llama()
    scores = random_scores(model, seed=4)
    by_row = prune_methods.unstructured(PruneRequest(scores, 0.5, {"pattern": "2:4", "group": "row"}, model=model))
    by_module = pattern_masks(model, scores, "2:4", 0.5)
    assert all(torch.equal(by_row[n], by_module[n]) for n in scores)


@pytest.mark.parametrize("sparsity", [0.3, 0.75])
def test_other_sparsities_are_refused(sparsity: float) -> None:
    model = conformance.tiny_bert(layers=1)
    with pytest.raises(ValueError, match=f"pattern 2:4 prunes exactly 0.5 of the weights, not {sparsity:g}"):
        pattern_masks(model, random_scores(model), "2:4", sparsity)


def test_a_sparsity_close_to_one_minus_n_over_m_is_accepted() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 2))
    mask = pattern_masks(model, {"0": torch.rand(2, 6)}, "1:3", 0.667)["0"]
    assert mask.sum(1).tolist() == [2, 2]


def test_input_width_must_divide_by_m() -> None:
    model = conformance.tiny_bert(layers=1)  # inputs: 32 (q, k, v, o, intermediate) and 32 (output.dense)
    with pytest.raises(ValueError, match="pattern 2:3 needs an input width divisible by 3: .* has 32 inputs"):
        pattern_masks(model, random_scores(model), "2:3", 1 / 3)


def test_a_pattern_needs_the_model() -> None:
    scores = random_scores(conformance.tiny_bert(layers=1))
    with pytest.raises(ValueError, match="pattern 2:4 needs the model"):
        prune_methods.unstructured(PruneRequest(scores, 0.5, {"pattern": "2:4"}))


@pytest.mark.parametrize("pattern", ["2:2", "4:2", "0:4", "2-4", "a:4", "2:", ":4", "2:4:8", " 2:4"])
def test_bad_patterns_are_refused_when_options_are_made(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern must be N:M with 1 <= N < M"):
        UnstructuredOptions(pattern=pattern)


def test_bad_pattern_is_a_one_line_usage_error_while_planning() -> None:
    from harness.plugins import load_registry, parse_options

    registry = load_registry()
    assert parse_options(["unstructured.pattern=2:4"], registry) == {"unstructured": {"pattern": "2:4"}}
    with pytest.raises(UsageError, match=r"^options of unstructured: pattern must be N:M .* not '8:4'$"):
        parse_options(["unstructured.pattern=8:4"], registry)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_pruned_model_saves_and_reloads_with_the_pattern(arch: str, tmp_path) -> None:
    from harness.surgery import load_pruned, save_pruned

    model = conformance.tiny_bert() if arch == "bert" else tiny_gpt2()
    scores = random_scores(model, seed=7)
    pruned = WEIGHT.apply(model, pattern_masks(model, scores, "2:4", 0.5))
    reloaded = load_pruned(save_pruned(pruned, tmp_path / arch))
    weights = dict(reloaded.named_modules())
    for name in surgery.target_modules(model):
        weight = weights[name].weight.detach()
        assert torch.equal(weight, dict(pruned.named_modules())[name].weight.detach()), name
        assert bool((blocks(weight != 0, 4, arch == "gpt2").sum(-1) == 2).all()), name
    batch = conformance.tiny_batches(count=1)[0]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert torch.allclose(pruned(**inputs).logits, reloaded(**inputs).logits, atol=1e-6)


def test_bench_prunes_two_of_four_and_refuses_other_sparsities(tiny_model_dir, tmp_path) -> None:
    import harness

    result = harness.run(models=[str(tiny_model_dir("bert"))], plugins=["wanda", "unstructured"], out=tmp_path / "out",
                         sparsities=[0.5, 0.3], train_steps=2, calib_examples=8, eval_limit=16, latency_batch=2,
                         latency_tokens=8, isolation="none", progress=False, baselines=False,
                         options=["unstructured.pattern=2:4"])
    rows = result.rows[result.rows["scorer"] == "wanda"].set_index("sparsity")
    assert rows.loc[0.5, "status"] == "ok" and rows.loc[0.5, "achieved_sparsity"] == pytest.approx(0.5, abs=1e-9)
    assert '"pattern":"2:4"' in rows.loc[0.5, "options"]
    assert rows.loc[0.3, "status"] == "error"
    assert "pattern 2:4 prunes exactly 0.5 of the weights, not 0.3" in rows.loc[0.3, "error"]
