"""The built-in ``wanda`` scorer: |W_ij| · ‖X_j‖₂ on BERT, GPT-2 (Conv1D) and LLaMA, checked by hand."""

from __future__ import annotations

import pytest
import torch
from harness_plugins import wanda
from test_calibration import WANDA, padded_batches, real, tiny_gpt2, tiny_llama

from harness import ScoreRequest, conformance, surgery

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {"bert": conformance.tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}


def inputs_by_hand(model: torch.nn.Module, name: str, batches: list[dict]) -> torch.Tensor:
    """The named module's input at real tokens, ``[tokens, in]``, captured with a plain hook."""
    module, captured = dict(model.named_modules())[name], []
    handle = module.register_forward_pre_hook(lambda _, args: captured.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    return torch.cat([real(x, b) for x, b in zip(captured, batches)])


def test_registered_with_weight_granularity() -> None:
    record = wanda.harness_scorers()[0]
    assert (record.name, record.granularity, record.baseline) == ("wanda", "weight", False)
    assert "group=row" in record.description
    conformance.check_plugin(record)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_scores_are_weight_times_input_norm(arch: str) -> None:
    model, batches = MODELS[arch](), padded_batches()
    targets = surgery.target_modules(model)
    scores = wanda.score(ScoreRequest(model, batches, 0, targets=targets))
    assert list(scores) == list(targets)
    modules = dict(model.named_modules())
    for name in (targets[0], targets[-1]):  # the first layer's q (or c_attn) and the last layer's down projection
        norms = inputs_by_hand(model, name, batches).norm(dim=0)  # [in], padding left out
        weight = modules[name].weight.detach()
        by_hand = weight.abs() * (norms[:, None] if arch == "gpt2" else norms[None, :])  # Conv1D stores [in, out]
        assert scores[name].shape == weight.shape and scores[name].dtype == torch.float32
        assert torch.allclose(scores[name], by_hand, rtol=1e-4, atol=1e-6), name


def test_same_as_the_documented_third_party_plugin() -> None:
    model, batches = tiny_gpt2(), padded_batches()
    targets = surgery.target_modules(model)
    ours = wanda.score(ScoreRequest(model, batches, 0, targets=targets))
    documented = WANDA.score(ScoreRequest(model, batches, 0, targets=targets))
    assert all(torch.equal(ours[name], documented[name]) for name in targets)


def test_padding_does_not_change_scores() -> None:
    model, batches = conformance.tiny_bert(), padded_batches()
    longer = [{"input_ids": torch.cat([b["input_ids"], torch.zeros(4, 3, dtype=torch.long)], 1),
               "attention_mask": torch.cat([b["attention_mask"], torch.zeros(4, 3, dtype=torch.long)], 1),
               "labels": b["labels"]} for b in batches]
    targets = surgery.target_modules(model, "ffn")
    plain = wanda.score(ScoreRequest(model, batches, 0, targets=targets))
    padded = wanda.score(ScoreRequest(model, longer, 0, targets=targets))
    assert all(torch.allclose(plain[n], padded[n], rtol=1e-5, atol=1e-6) for n in targets)


def test_without_targets_scores_every_linear_module() -> None:
    model = tiny_llama()
    scores = wanda.score(ScoreRequest(model, padded_batches()[:1], 0))
    assert tuple(scores) == surgery.target_modules(model) and len(scores) == 14  # q k v o gate up down, 2 layers


def test_weights_unchanged_and_deterministic() -> None:
    model, batches = tiny_llama(), padded_batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = wanda.score(ScoreRequest(model, batches, 0, targets=surgery.target_modules(model, "ffn")))
    again = wanda.score(ScoreRequest(model, batches, 1, targets=surgery.target_modules(model, "ffn")))
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def sequential_record():
    return next(r for r in wanda.harness_scorers() if r.name == "wanda-sequential")


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_sequential_scores_each_block_after_pruning_the_blocks_below(arch: str) -> None:
    from harness_plugins.prune_methods import unstructured

    from harness import PruneRequest, calibration

    model, batches = MODELS[arch](), padded_batches()
    targets = surgery.target_modules(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sequential = wanda.score_sequential(ScoreRequest(model, batches, 0, sparsity=0.5, targets=targets))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the given model is untouched"
    plain = wanda.score(ScoreRequest(model, batches, 0, targets=targets))
    first, second = calibration.blocks(targets).values()
    assert all(torch.allclose(sequential[n], plain[n], rtol=1e-5, atol=1e-6) for n in first)  # block 0: dense inputs
    by_hand = MODELS[arch]()  # block 0 pruned row-wise by its own scores, then block 1 scored
    surgery.apply_weight_masks(by_hand, unstructured(PruneRequest({n: plain[n] for n in first}, 0.5, {"group": "row"},
                                                                  model=by_hand)))
    rescored = wanda.score(ScoreRequest(by_hand, batches, 0, targets=tuple(second)))
    assert all(torch.allclose(sequential[n], rescored[n], rtol=1e-4, atol=1e-6) for n in second)
    assert not all(torch.allclose(sequential[n], plain[n], rtol=1e-3) for n in second)


def test_sequential_is_scored_per_sparsity_and_conformant() -> None:
    record = sequential_record()
    assert (record.granularity, record.per_sparsity, record.updates_model) == ("weight", True, False)
    conformance.check_plugin(record)
