"""Recovery after pruning and adapter spectra in the grid: sparsity survives training and merging."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import batch_for, tiny_model

from harness import modeling, surgery
from harness.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--train-steps", "3", "--calib-examples", "8", "--latency-batch", "2", "--latency-tokens", "8",
        "--eval-limit", "16", "--no-progress", "--no-baselines", "--sparsities", "0.5"]


def test_recovery_rows_keep_the_sparsity(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--out", str(out), *FAST,
            "--plugins", "head-gradient,heads,magnitude,global-unstructured,finetune",
            "--recover", "lora", "--recover-steps", "4", "-o", "lora.r=2", "-o", "lora.targets=all"]
    assert main(argv) == 0
    frame = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
    assert len(frame) == 1 + 2 * 2 and (frame["status"] == "ok").all()
    recovered = frame[frame["recovery"] != ""]
    assert len(recovered) == 2 and set(recovered["recovery"]) == {'lora{"r":2,"targets":"all"}'}
    for pruner in ("heads", "global-unstructured"):
        before = frame[(frame["pruner"] == pruner) & (frame["recovery"] == "")].iloc[0]
        after = frame[(frame["pruner"] == pruner) & (frame["recovery"] != "")].iloc[0]
        assert after["params"] == before["params"], "a physically pruned model stays small"
        assert after["achieved_sparsity"] == pytest.approx(before["achieved_sparsity"], abs=1e-9), "zeros kept"
        assert 0 < after["trainable_params"] < after["params"], "adapter parameters counted apart"
        assert json.loads(after["extras"])["recovery/trainable_params"] == after["trainable_params"]
    assert frame.loc[frame["pruner"] == "global-unstructured", "achieved_sparsity"].iloc[0] == pytest.approx(0.5)


def test_lora_unit_writes_spectra_and_rank_columns(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--out", str(out), *FAST,
            "--plugins", "random,heads,lora", "-o", "lora.r=4"]
    assert main(argv) == 0
    frame = pd.read_csv(out / "leaderboard.csv")
    assert set(frame["adapter"]) == {"lora"}
    config = json.loads(frame["adapter_config"].iloc[0])
    assert config["r"] == 4 and config["targets"] == "qv"
    assert frame["erank_q"].between(1, 4).all() and frame["erank_v"].between(1, 4).all()
    assert frame["erank_k"].isna().all(), "k was not adapted"
    assert (frame["trainable_params"] < frame["params"] / 5).all()
    spectra = pd.read_csv(next((out / "spectra").glob("*-spectra.csv")))
    assert set(spectra["kind"]) == {"q", "v"} and spectra["module"].nunique() == 2 * 3  # q, v in 3 layers
    nonzero = spectra[spectra["normalised"] > 1e-5].groupby("module").size()
    assert (nonzero <= 4).all(), "a rank-4 update has at most 4 nonzero singular values"
    assert next((out / "spectra").glob("*-spectra.png")).stat().st_size > 10_000


def _masked_attention(seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model = tiny_model()
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(modules[n].weight.shape, generator=generator) > 0.5
             for n in surgery.target_modules(model, "attention")}
    return surgery.apply_weight_masks(model, masks), masks


def _steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, count: int) -> None:
    model.train()
    for step in range(count):
        modeling.per_example_loss(model, batch_for(model, seed=step)).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("make", [lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
                                  lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9)], ids=["adamw", "sgd"])
def test_held_masks_keep_zeros_through_any_optimizer_and_release_on_exit(make):
    model, masks = _masked_attention()
    modules = dict(model.named_modules())
    before = {n: modules[n].weight.detach().clone() for n in masks}
    optimizer = make(model.parameters())
    with surgery.hold_weight_masks(model, masks):
        _steps(model, optimizer, 3)
        for name, mask in masks.items():
            weight = modules[name].weight.detach()
            assert not weight[~mask].any(), f"{name}: a pruned weight moved"
            assert not torch.equal(weight[mask], before[name][mask]), f"{name}: kept weights did not train"
    _steps(model, optimizer, 1)
    moved = sum(int(modules[n].weight.detach()[~m].count_nonzero()) for n, m in masks.items())
    assert moved > 0, "the hook outlived its context"


def test_held_masks_leave_frozen_weights_alone_and_check_every_mask_first():
    """Like LoRA's base: masked weights frozen while other parameters train under the hook."""
    model, masks = _masked_attention()
    modules = dict(model.named_modules())
    before = {n: modules[n].weight.detach().clone() for n in masks}
    head = model.classifier.weight.detach().clone()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("classifier"))
    with surgery.hold_weight_masks(model, masks):
        _steps(model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2), 2)
    assert all(torch.equal(modules[n].weight, before[n]) for n in masks)
    assert not torch.equal(model.classifier.weight, head), "the trainable parameters trained"
    name = next(iter(masks))
    with pytest.raises(ValueError, match="shape"):
        with surgery.hold_weight_masks(model, {**masks, name: torch.ones(3, 3, dtype=torch.bool)}):
            pass


def test_full_fine_tuning_recovery_trains_the_sparse_model(tiny_model_dir, tmp_path, monkeypatch):
    """Pruned weights stay zero during recovery itself, not only after the final re-mask."""
    stray: list[int] = []
    apply = surgery.apply_weight_masks

    def spy(model, masks):
        modules = dict(model.named_modules())
        stray.append(sum(int(modules[n].weight.detach()[~m].count_nonzero()) for n, m in masks.items()))
        return apply(model, masks)

    monkeypatch.setattr(surgery, "apply_weight_masks", spy)
    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--out", str(out), *FAST,
            "--plugins", "magnitude,global-unstructured,finetune", "--recover", "finetune", "--recover-steps", "4",
            "--isolation", "none"]  # the spy lives in this process
    assert main(argv) == 0
    frame = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
    assert len(frame) == 3 and (frame["status"] == "ok").all()
    # pruning the plain cell, pruning the cell to recover, masking again after its recovery
    assert len(stray) == 3 and stray[0] == stray[1] > 0, "pruning zeroes weights that were not zero"
    assert stray[2] == 0, "recovery moved pruned weights"
    before, after = (frame[(frame["pruner"] != "none") & (frame["recovery"] == r)].iloc[0] for r in ("", "finetune"))
    assert after["achieved_sparsity"] == pytest.approx(before["achieved_sparsity"], abs=1e-9) == pytest.approx(0.5)
    assert after["trainable_params"] == after["params"]
    assert json.loads(after["extras"])["recovery/final_loss"] > 0
