"""The ``unstructured`` pruner's ``group`` option: per module (default, unchanged) or per output row (Wanda)."""

from __future__ import annotations

import pytest
import torch
from harness_plugins import prune_methods
from test_calibration import tiny_gpt2

from harness import PruneRequest, conformance, surgery

pytestmark = pytest.mark.usefixtures("one_thread")


def random_scores(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    return {name: torch.rand(modules[name].weight.shape, generator=generator) for name in surgery.target_modules(model)}


def module_mask_before_group(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """What ``unstructured`` computed before ``group`` existed: the module's lowest ``round(sparsity * n)``."""
    mask = torch.ones_like(scores, dtype=torch.float32)
    count = round(sparsity * scores.numel())
    if count:
        mask.view(-1)[torch.topk(scores.reshape(-1), count, largest=False).indices] = 0
    return mask.bool()


def unstructured(scores: dict[str, torch.Tensor], sparsity: float, model: torch.nn.Module | None,
                 **options: str) -> dict[str, torch.Tensor]:
    return prune_methods.unstructured(PruneRequest(scores, sparsity, options, model=model))


def test_unstructured_declares_group() -> None:
    from harness.options import describe

    (record,) = [p for p in prune_methods.harness_pruners() if p.name == "unstructured"]
    (group,) = [spec for spec in describe(record) if spec.name == "group"]
    assert (group.default, group.choices) == ("module", ("module", "row"))
    conformance.check_plugin(record)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_row_group_on_linear_keeps_exact_count_per_row(sparsity: float) -> None:
    model = conformance.tiny_bert()
    scores = random_scores(model)
    masks = unstructured(scores, sparsity, model, group="row")
    for name, mask in masks.items():
        out, width = scores[name].shape  # Linear: [out, in]
        assert mask.dtype == torch.bool and mask.shape == (out, width)
        assert mask.sum(1).tolist() == [width - round(sparsity * width)] * out, name
        if 0 < sparsity < 1:  # the lowest of each row went
            kept, gone = scores[name].masked_fill(~mask, torch.inf), scores[name].masked_fill(mask, -torch.inf)
            assert bool((kept.min(1).values > gone.max(1).values).all())


@pytest.mark.parametrize("sparsity", [0.25, 0.6])
def test_row_group_on_conv1d_keeps_exact_count_per_column(sparsity: float) -> None:
    model = tiny_gpt2()
    scores = random_scores(model, seed=1)
    masks = unstructured(scores, sparsity, model, group="row")
    assert "transformer.h.0.mlp.c_fc" in masks
    for name, mask in masks.items():
        width, out = scores[name].shape  # Conv1D: [in, out]; an output row is a column
        assert mask.sum(0).tolist() == [width - round(sparsity * width)] * out, name
        kept, gone = scores[name].masked_fill(~mask, torch.inf), scores[name].masked_fill(mask, -torch.inf)
        assert bool((kept.min(0).values > gone.max(0).values).all())


def test_row_group_keeps_every_output_where_module_group_empties_one() -> None:
    model = conformance.tiny_bert(layers=1)
    name = "bert.encoder.layer.0.attention.self.query"
    scores = {name: torch.arange(32 * 32, dtype=torch.float32).view(32, 32)}  # row 0 is the least important
    by_module = unstructured(scores, 0.5, model)[name]
    by_row = unstructured(scores, 0.5, model, group="row")[name]
    assert by_module.sum(1)[:16].tolist() == [0] * 16 and by_module.sum(1)[16:].tolist() == [32] * 16
    assert by_row.sum(1).tolist() == [16] * 32 and bool(by_row[:, 16:].all()) and not by_row[:, :16].any()


def test_ties_in_a_row_go_to_the_lower_position() -> None:
    model = conformance.tiny_bert(layers=1)
    name = "bert.encoder.layer.0.output.dense"  # [32, 32]
    mask = unstructured({name: torch.zeros(32, 32)}, 0.25, model, group="row")[name]
    assert not mask[:, :8].any() and bool(mask[:, 8:].all())


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.5])
def test_module_group_is_unchanged(sparsity: float) -> None:
    model = conformance.tiny_bert()
    scores = random_scores(model, seed=2)
    default = unstructured(scores, sparsity, None)
    for masks in (default, unstructured(scores, sparsity, model, group="module"), unstructured(scores, sparsity, model)):
        assert set(masks) == set(scores)
        for name, mask in masks.items():
            assert torch.equal(mask, module_mask_before_group(scores[name], sparsity)), name


def test_row_group_needs_the_model() -> None:
    scores = random_scores(conformance.tiny_bert(layers=1))
    with pytest.raises(ValueError, match="group=row needs the model"):
        unstructured(scores, 0.5, None, group="row")


def test_bench_prunes_wanda_scores_per_row(tiny_model_dir, tmp_path) -> None:
    """The built-in ``wanda`` scorer (the documented third-party one is checked against it in test_wanda)."""
    import pandas as pd

    from harness.cli import main

    argv = ["bench", "--isolation", "none", "--models", str(tiny_model_dir("bert")), "--out", str(tmp_path),
            "--sparsities", "0.5", "--train-steps", "2", "--calib-examples", "8", "--latency-batch", "2",
            "--latency-tokens", "8", "--eval-limit", "16", "--no-progress", "--no-baselines",
            "--plugins", "wanda,unstructured", "-o", "unstructured.group=row"]
    assert main(argv) == 0
    frame = pd.read_csv(tmp_path / "leaderboard.csv", keep_default_na=False)
    pruned = frame[frame["scorer"] == "wanda"]
    assert list(pruned["status"]) == ["ok"] and pruned["achieved_sparsity"].iloc[0] == pytest.approx(0.5)
    assert '"group":"row"' in pruned["options"].iloc[0].replace(" ", "")
