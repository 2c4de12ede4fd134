"""The built-in ``sparsegpt`` pruner: a direct OBS reference, reconstruction error, N:M, sequential calibration, rows."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from harness_plugins import sparsegpt
from test_calibration import padded_batches, real, tiny_gpt2, tiny_llama
from test_language_model import decoder_dir
from test_wikitext import WINDOW, data_dir  # noqa: F401 (a fixture)

from harness import PruneRequest, calibration, conformance, surgery
from harness.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {"bert": conformance.tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}


def obs_by_hand(weight: torch.Tensor, gram: torch.Tensor, sparsity: float, blocksize: int, percdamp: float,
                pattern: tuple[int, int] | None = None, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT the slow way, in float64: for each column, the inverse Hessian of the columns not yet visited,
    inverted explicitly; zeroing w_j moves the rest of the row by -(w_j / [H_F⁻¹]_00) [H_F⁻¹]_0,: (OBS).
    ``reference``: a block's mask as the reference code chooses it (saliency <= its int(n·sparsity)-th lowest)."""
    w, h = weight.double().clone(), gram.double().clone()
    rows, cols = w.shape
    h += percdamp * h.diagonal().mean() * torch.eye(cols, dtype=h.dtype)
    pruned = torch.zeros(rows, cols, dtype=torch.bool)

    def remaining_inverse(j: int) -> torch.Tensor:
        return torch.linalg.inv(h[j:, j:])

    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        diag = torch.tensor([remaining_inverse(j)[0, 0].item() for j in range(start, end)], dtype=h.dtype)
        if pattern is None:  # the block's share of the weights with the lowest w² / [H_F⁻¹]_00
            count = round(sparsity * rows * end) - round(sparsity * rows * start)
            saliency = (w[:, start:end] ** 2 / diag).flatten()
            chosen = torch.zeros(saliency.numel(), dtype=torch.bool)
            chosen[saliency.argsort()[:count]] = True
            if reference:
                chosen = saliency <= saliency.sort().values[int(saliency.numel() * sparsity)]
            pruned[:, start:end] = chosen.view(rows, end - start)
        for j in range(start, end):
            if pattern is not None and (j - start) % pattern[1] == 0:
                n, m = pattern
                saliency = w[:, j:j + m] ** 2 / diag[j - start:j - start + m]
                pruned[:, j:j + m].scatter_(1, saliency.argsort(dim=1)[:, : m - n], True)
            inverse = remaining_inverse(j)
            for row in torch.nonzero(pruned[:, j]).flatten().tolist():
                w[row, j:] -= w[row, j] / inverse[0, 0] * inverse[0, :]
                w[row, j] = 0.0
    return ~pruned, w


def layer_data(rows: int = 6, cols: int = 16, tokens: int = 200, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.eye(cols) + 0.4 * torch.randn(cols, cols, generator=generator)  # correlated, as activations are
    x = torch.randn(tokens, cols, generator=generator) @ mixing * torch.linspace(0.2, 3.0, cols)  # uneven scales
    weight = torch.randn(rows, cols, generator=generator)
    return weight, x


@pytest.mark.parametrize("pattern", [None, (2, 4)], ids=["unstructured", "2:4"])
def test_matches_a_direct_obs_reference_on_one_layer(pattern) -> None:
    weight, x = layer_data()
    gram = x.T @ x
    keep, rebuilt = sparsegpt.reconstruct(weight, gram, 0.5, pattern, blocksize=8, percdamp=0.01)
    keep_ref, rebuilt_ref = obs_by_hand(weight, gram, 0.5, blocksize=8, percdamp=0.01, pattern=pattern)
    assert torch.equal(keep, keep_ref)
    assert torch.allclose(rebuilt.double(), rebuilt_ref, atol=1e-4), (rebuilt.double() - rebuilt_ref).abs().max()
    assert int((~keep).sum()) == 48 and bool((rebuilt[~keep] == 0).all())


def test_the_reference_count_removes_one_more_per_block_ties_included() -> None:
    """``count=reference`` (the reference code, llmcompressor): saliency <= the int(n·p)-th lowest of each block."""
    weight, x = layer_data()
    gram = x.T @ x
    keep, rebuilt = sparsegpt.reconstruct(weight, gram, 0.5, blocksize=8, percdamp=0.01, count="reference")
    keep_ref, rebuilt_ref = obs_by_hand(weight, gram, 0.5, blocksize=8, percdamp=0.01, reference=True)
    assert torch.equal(keep, keep_ref)
    assert torch.allclose(rebuilt.double(), rebuilt_ref, atol=1e-4), (rebuilt.double() - rebuilt_ref).abs().max()
    assert [int((~keep[:, i:i + 8]).sum()) for i in (0, 8)] == [25, 25]  # int(48 · 0.5) + 1 per block, not 24
    tied = weight.clone()
    tied[:4, 0] = 0.0  # 4 equal lowest saliencies in the first block; at sparsity 0.05 the threshold is one of them
    keep, _ = sparsegpt.reconstruct(tied, gram, 0.05, blocksize=8, count="reference")
    assert int((~keep[:, :8]).sum()) == 4 and not bool(keep[:4, 0].any())
    keep, _ = sparsegpt.reconstruct(tied, gram, 0.05, blocksize=8)
    assert int((~keep[:, :8]).sum()) == 2  # exact: round(0.05 · 48) = 2 of the block
    masks = masks_of(tiny_llama(), 0.5, count="reference")
    exact = masks_of(tiny_llama(), 0.5)
    assert all(int((~masks[n]).sum()) > int((~exact[n]).sum()) == round(0.5 * exact[n].numel()) for n in exact)
    with pytest.raises(ValueError, match="count must be 'exact' or 'reference'"):
        sparsegpt.SparseGPTOptions.of({"count": "more"})


def test_a_fixed_mask_is_only_reconstructed() -> None:
    weight, x = layer_data(seed=1)
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(2)) > 0.6
    chosen, rebuilt = sparsegpt.reconstruct(weight, x.T @ x, 0.0, blocksize=5, fixed=keep)
    assert torch.equal(chosen, keep)
    _, by_hand = obs_by_hand(weight, x.T @ x, 0.0, blocksize=5, percdamp=0.01)  # sparsity 0: no selection
    assert torch.allclose(by_hand.float(), weight, atol=1e-6)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_the_update_leaves_a_smaller_output_error_than_the_same_mask_alone(sparsity: float) -> None:
    weight, x = layer_data(rows=12, cols=32, tokens=400, seed=3)
    keep, rebuilt = sparsegpt.reconstruct(weight, x.T @ x, sparsity, blocksize=16)
    dense = x @ weight.T
    with_update = (x @ rebuilt.T - dense).square().sum()
    mask_only = (x @ (weight * keep).T - dense).square().sum()
    assert with_update < 0.95 * mask_only, (float(with_update), float(mask_only))


def module_inputs(model: torch.nn.Module, name: str, batches: list[dict]) -> torch.Tensor:
    module, captured = dict(model.named_modules())[name], []
    handle = module.register_forward_pre_hook(lambda _, args: captured.append(args[0].detach().clone()))
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    return torch.cat([real(x, b) for x, b in zip(captured, batches)])


def masks_of(model: torch.nn.Module, sparsity: float, **options: object) -> dict[str, torch.Tensor]:
    scores = {n: torch.zeros(dict(model.named_modules())[n].weight.shape) for n in surgery.target_modules(model)}
    return sparsegpt.compute_mask(PruneRequest(scores, sparsity, options, model=model, batches=padded_batches()))


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_layer_output_is_closer_to_the_dense_one_than_with_the_mask_alone(arch: str) -> None:
    dense, pruned = MODELS[arch](), MODELS[arch]()
    keep = masks_of(pruned, 0.5, sequential=False)  # every layer from the dense inputs: comparable layer by layer
    for name, mask in keep.items():
        x = module_inputs(dense, name, padded_batches())
        before, after = dict(dense.named_modules())[name], dict(pruned.named_modules())[name]
        with torch.no_grad():
            reference = before(x)
            saved = before.weight.clone()
            before.weight.mul_(mask)  # the same mask, kept weights unchanged
            masked = before(x)
            before.weight.copy_(saved)
            assert (after(x) - reference).square().sum() < (masked - reference).square().sum(), name
        assert bool((after.weight[~mask] == 0).all()) and abs(float((~mask).float().mean()) - 0.5) < 0.02


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize(("pattern", "m", "n"), [("2:4", 4, 2), ("4:8", 8, 4)])
def test_n_of_every_m_inputs_survive(arch: str, pattern: str, m: int, n: int) -> None:
    model = MODELS[arch]()
    keep = masks_of(model, 1 - n / m, pattern=pattern)
    modules = dict(model.named_modules())
    for name, mask in keep.items():
        weight = modules[name].weight.detach()
        rows = weight.T if arch == "gpt2" else weight  # Conv1D stores [in, out]: groups run along the inputs
        assert bool(((rows != 0).reshape(rows.shape[0], -1, m).sum(-1) == n).all()), name
        assert torch.equal(mask, weight != 0), name


def test_a_pattern_needs_its_sparsity_and_a_fitting_blocksize() -> None:
    with pytest.raises(ValueError, match=r"pattern 2:4 prunes exactly 0.5 of the weights, not 0.6"):
        masks_of(tiny_llama(), 0.6, pattern="2:4")
    with pytest.raises(ValueError, match=r"blocksize 6 must be a multiple of M=4"):
        sparsegpt.SparseGPTOptions.of({"pattern": "2:4", "blocksize": 6})


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_sequential_statistics_see_the_blocks_below_as_updated(arch: str) -> None:
    """Block 1's first input projection sees block 0 as the update left it (weights halved), padding excluded."""
    model, batches = MODELS[arch](), padded_batches()
    names = surgery.target_modules(model)
    groups = calibration.blocks(names)
    assert len(groups) == 2 and sum(len(members) for members in groups.values()) == len(names)
    first_of_block_1 = list(groups.values())[1][0]
    seen: dict[str, calibration.InputStats] = {}

    def update(stats: dict[str, calibration.InputStats]) -> None:
        seen.update(stats)
        if first_of_block_1 not in stats:
            for name in stats:
                with torch.no_grad():
                    dict(model.named_modules())[name].weight.mul_(0.5)

    calibration.sequential_statistics(model, batches, names, update)
    assert set(seen) == set(names) and seen[first_of_block_1].tokens == 41
    x = module_inputs(model, first_of_block_1, batches)  # block 0 halved, block 1 untouched: exact inputs now
    assert torch.allclose(seen[first_of_block_1].gram, x.T @ x, rtol=1e-4, atol=1e-4)
    dense = MODELS[arch]()
    y = module_inputs(dense, first_of_block_1, batches)
    assert not torch.allclose(seen[first_of_block_1].gram, y.T @ y, rtol=1e-3)


def test_sequential_and_one_pass_calibration_differ_only_after_the_first_block() -> None:
    one_pass, sequential = tiny_llama(), tiny_llama()
    masks_of(one_pass, 0.5, sequential=False)
    masks_of(sequential, 0.5)
    first, second = dict(one_pass.named_modules()), dict(sequential.named_modules())
    names = surgery.target_modules(one_pass)
    assert all(torch.equal(first[n].weight, second[n].weight) for n in names if ".layers.0." in n)
    assert not all(torch.equal(first[n].weight, second[n].weight) for n in names if ".layers.1." in n)


def test_registered_and_conformant() -> None:
    (record,) = sparsegpt.harness_pruners()
    assert (record.name, record.granularity, record.uses_scores, record.updates_model) == \
        ("sparsegpt", "weight", False, True)
    conformance.check_plugin(record)


def test_sparsity_zero_changes_nothing() -> None:
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = masks_of(model, 0.0)
    assert all(bool(m.all()) for m in keep.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_pruned_model_saves_and_reloads(tmp_path) -> None:
    from harness.granularities.weights import WEIGHT
    from harness.surgery import load_pruned, save_pruned

    model = tiny_llama()
    pruned = WEIGHT.apply(model, masks_of(model, 0.5, pattern="2:4"))
    reloaded = load_pruned(save_pruned(pruned, tmp_path / "llama"))
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in pruned.state_dict().items())


def test_bench_rows_say_the_weights_were_updated(data_dir, tmp_path) -> None:  # noqa: F811 (the fixture)
    out = tmp_path / "out"
    argv = ["bench", "--models", str(decoder_dir(tmp_path / "llama", "llama")), "--tasks", "wikitext2",
            "--data-dir", str(data_dir), "-o", f"wikitext2.max_length={WINDOW}", "--plugins",
            "magnitude,unstructured,sparsegpt", "--sparsities", "0.5", "--no-baselines", "--calib-examples", "8",
            "--batch-size", "4", "--latency-batch", "2", "--latency-tokens", "16", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    rows = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index("pruner")
    assert (rows["status"] == "ok").all(), rows["error"]
    assert rows.loc["sparsegpt", "scorer"] == "none" and rows.loc["sparsegpt", "updates_weights"] == True  # noqa: E712
    assert rows.loc["unstructured", "updates_weights"] == False and rows.loc["none", "updates_weights"] == False  # noqa: E712
    assert rows.loc["sparsegpt", "achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert rows.loc["sparsegpt", "prune_s"] > 0 and math.isfinite(rows.loc["sparsegpt", "score"])
    extras = json.loads(rows.loc["sparsegpt", "extras"])
    assert extras["sparsegpt/calibration_tokens"] == 8 * WINDOW and extras["calib_examples"] == 8
