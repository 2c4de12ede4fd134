"""harness.calibration: input statistics and head contexts checked against hand computation, and a Wanda plugin.

The models are tiny and random, built from configs (no download); the batches
have padding, so every check also shows that padded tokens are left out.
"""

from __future__ import annotations

import inspect
import math
import sys

import pytest
import torch
from conftest import REPO
from harness_plugins import prune_methods

from harness import PruneRequest, Scorer, ScoreRequest, calibration, conformance, surgery

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- a third-party Wanda scorer
def wanda(request: ScoreRequest) -> dict[str, torch.Tensor]:
    """Wanda (Sun et al. 2023): |W_ij| · ‖X_j‖₂, the norm of input j over the calibration tokens."""
    from harness import calibration

    modules = dict(request.model.named_modules())
    stats = calibration.input_statistics(request.model, request.batches, request.targets)
    scores = {}
    for name in request.targets:
        module = modules[name]
        norms = stats[name].norms().unsqueeze(1 - calibration.input_axis(module))  # broadcast along outputs
        scores[name] = module.weight.detach().abs().float().cpu() * norms
    return scores


WANDA = Scorer("wanda", "weight", wanda, "|W| times the L2 norm of its input over calibration tokens")
# --------------------------------------------------------------------------- end of the plugin


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model("gpt2", vocab_size=64, n_embd=32, n_inner=48, n_layer=2, n_head=4, n_positions=32,
                                  num_labels=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    """Grouped-query attention: 4 query heads share 2 key/value heads (head size 8)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, num_labels=2, pad_token_id=0,
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def padded_batches() -> list[dict[str, torch.Tensor]]:
    """Two batches of 4 x 6 tokens; 5 padded positions in the first, 2 in the second (right padding)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for pads in ((3, 0, 2, 0), (0, 0, 0, 2)):
        ids = torch.randint(5, 64, (4, 6), generator=generator)
        mask = torch.ones_like(ids)
        for row, pad in enumerate(pads):
            mask[row, 6 - pad :] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": torch.arange(4) % 2})
    return batches


def real(x: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The rows of ``x`` ([B, T, ...]) at real tokens."""
    return x[batch["attention_mask"].bool()]


def bert_embeddings(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Input of BERT's first layer (the query, key and value projections), by hand."""
    with torch.no_grad():
        return model.bert.embeddings(input_ids=batch["input_ids"])


def gpt2_first_input(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Input of GPT-2's first ``c_attn``: ln_1 of token plus position embeddings, by hand."""
    transformer = model.transformer
    with torch.no_grad():
        positions = torch.arange(batch["input_ids"].shape[1])
        return transformer.h[0].ln_1(transformer.wte(batch["input_ids"]) + transformer.wpe(positions))


def bert_first_contexts(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Layer 0's attention contexts ``[real tokens, heads, head_dim]``, softmax(QKᵀ/√d + mask)·V written out."""
    attention = model.bert.encoder.layer[0].attention.self
    x, heads, dim = bert_embeddings(model, batch), 4, 8
    with torch.no_grad():
        q, k, v = (p(x).view(*x.shape[:2], heads, dim).transpose(1, 2) for p in
                   (attention.query, attention.key, attention.value))
        bias = (1 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim) + bias, dim=-1)
        return real((probs @ v).transpose(1, 2), batch)


# --------------------------------------------------------------------------- input_axis


def test_input_axis_linear_conv1d_and_others() -> None:
    gpt2 = tiny_gpt2()
    c_attn = gpt2.transformer.h[0].attn.c_attn
    assert calibration.input_axis(torch.nn.Linear(3, 5)) == 1
    assert calibration.input_axis(c_attn) == 0 and tuple(c_attn.weight.shape) == (32, 96)  # [in, out]
    with pytest.raises(ValueError, match="Embedding"):
        calibration.input_axis(torch.nn.Embedding(4, 2))


# --------------------------------------------------------------------------- input statistics


def test_input_statistics_exclude_padding() -> None:
    model, batches = conformance.tiny_bert(), padded_batches()
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"]
    stats = calibration.input_statistics(model, batches, names, gram=True)
    x = torch.cat([real(bert_embeddings(model, b), b) for b in batches])  # [41, 32]
    assert x.shape == (48 - 7, 32)
    for name in names:
        assert stats[name].tokens == 41
        assert torch.allclose(stats[name].sum_squares, x.square().sum(0), rtol=1e-5, atol=1e-5)
        assert torch.allclose(stats[name].gram, x.T @ x, rtol=1e-5, atol=1e-4)
        assert torch.allclose(stats[name].norms(), x.norm(dim=0), rtol=1e-5)
        assert stats[name].sum_squares.dtype == torch.float32 and stats[name].sum_squares.device.type == "cpu"
    every = torch.cat([bert_embeddings(model, b).reshape(-1, 32) for b in batches])
    assert (every.square().sum(0) - stats[names[0]].sum_squares).min() > 1e-3  # padding would add to every feature


def test_batch_without_attention_mask_counts_every_token() -> None:
    model = conformance.tiny_bert()
    batches = [{k: v for k, v in b.items() if k != "attention_mask"} for b in padded_batches()]
    (stats,) = calibration.input_statistics(model, batches, ["bert.encoder.layer.0.attention.self.key"]).values()
    every = torch.cat([bert_embeddings(model, b).reshape(-1, 32) for b in batches])
    assert stats.tokens == 48 and stats.gram is None
    assert torch.allclose(stats.sum_squares, every.square().sum(0), rtol=1e-5, atol=1e-5)


def test_input_statistics_of_conv1d_on_gpt2() -> None:
    model, batches = tiny_gpt2(), padded_batches()
    stats = calibration.input_statistics(model, batches, ["transformer.h.0.attn.c_attn"])["transformer.h.0.attn.c_attn"]
    x = torch.cat([real(gpt2_first_input(model, b), b) for b in batches])
    assert stats.tokens == 41 and stats.sum_squares.shape == (32,)  # the input axis of a [32, 96] Conv1D weight
    assert torch.allclose(stats.sum_squares, x.square().sum(0), rtol=1e-5, atol=1e-5)


def test_only_model_inputs_reach_the_model_on_its_device_and_dtype() -> None:
    model = conformance.tiny_bert().to(torch.bfloat16)
    batches = [{**b, "example_id": torch.arange(4)} for b in padded_batches()]  # not a forward argument
    seen: list[tuple[torch.device, torch.dtype, tuple[int, ...]]] = []
    name = "bert.encoder.layer.1.intermediate.dense"
    calibration.visit_inputs(model, batches, [name], lambda _, x: seen.append((x.device, x.dtype, tuple(x.shape))))
    device = calibration.model_device(model)
    assert seen == [(device, torch.bfloat16, (19, 32)), (device, torch.bfloat16, (22, 32))]
    stats = calibration.input_statistics(model, batches, [name])[name]
    assert stats.sum_squares.dtype == torch.float32 and stats.tokens == 41 and not stats.sum_squares.is_inference()


def test_modes_restored_and_hooks_removed_even_on_error() -> None:
    model, batches = conformance.tiny_bert().train(), padded_batches()
    model.classifier.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    name = "bert.encoder.layer.0.output.dense"
    first = calibration.input_statistics(model, batches, [name])[name].sum_squares
    again = calibration.input_statistics(model, batches, [name])[name].sum_squares
    assert torch.equal(first, again)  # eval inside: no dropout
    assert {n: m.training for n, m in model.named_modules()} == modes

    def fail(*_: object) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        calibration.visit_inputs(model, batches, [name], fail)
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_input_statistics_errors() -> None:
    model, batches = conformance.tiny_bert(), padded_batches()
    with pytest.raises(ValueError, match="no modules named nope"):
        calibration.input_statistics(model, batches, ["nope"])
    with pytest.raises(ValueError, match="at least one batch"):
        calibration.input_statistics(model, [], ["bert.pooler.dense"])
    model.unused = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unused received no input"):
        calibration.input_statistics(model, batches, ["unused"])


# --------------------------------------------------------------------------- head contexts


def test_head_contexts_of_bert_match_attention_by_hand() -> None:
    model, batches = conformance.tiny_bert(), padded_batches()
    contexts = calibration.head_contexts(model, batches)
    assert calibration.output_projections(model) == tuple(f"bert.encoder.layer.{i}.attention.output.dense"
                                                           for i in range(2))
    by_hand = torch.cat([bert_first_contexts(model, b) for b in batches])  # [41, 4, 8]
    assert [c.tokens for c in contexts] == [41, 41] and contexts[0].sum_squares.shape == (4, 8)
    assert torch.allclose(contexts[0].sum_squares, by_hand.square().sum(0), rtol=1e-4, atol=1e-5)
    assert torch.allclose(contexts[0].squared_norms(), by_hand.square().sum((0, 2)), rtol=1e-4)
    assert torch.allclose(contexts[0].norms(), by_hand.square().sum((0, 2)).sqrt(), rtol=1e-4)


def test_head_contexts_follow_removed_heads() -> None:
    model, batches = conformance.tiny_bert(), padded_batches()
    dense = calibration.head_contexts(model, batches)
    pruned = calibration.head_contexts(surgery.remove_heads(model, [[0, 2, 3], [1]]), batches)
    assert [c.sum_squares.shape for c in pruned] == [(3, 8), (1, 8)]
    assert torch.allclose(pruned[0].squared_norms(), dense[0].squared_norms()[[0, 2, 3]], rtol=1e-4)


def test_head_contexts_of_gqa_llama_are_per_query_head() -> None:
    model, batches = tiny_llama(), padded_batches()
    captured: list[torch.Tensor] = []
    o_proj = model.model.layers[1].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda _, args: captured.append(args[0].detach().clone()))
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight[:8] = 0  # key/value head 0 feeds query heads 0 and 1
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    contexts = calibration.head_contexts(model, batches)
    assert [c.sum_squares.shape for c in contexts] == [(4, 8), (4, 8)] and contexts[1].tokens == 41
    by_hand = torch.cat([real(x, b) for x, b in zip(captured, batches)]).view(41, 4, 8)
    assert torch.allclose(contexts[1].squared_norms(), by_hand.square().sum((0, 2)), rtol=1e-4)
    assert torch.equal(contexts[0].squared_norms()[:2], torch.zeros(2)) and bool((contexts[0].norms()[2:] > 0).all())
    shapes: list[tuple[int, tuple[int, ...]]] = []
    calibration.visit_head_contexts(model, batches[:1], lambda layer, c: shapes.append((layer, tuple(c.shape))))
    assert shapes == [(0, (19, 4, 8)), (1, (19, 4, 8))]


# --------------------------------------------------------------------------- the Wanda plugin


def wanda_source() -> list[str]:
    """The plugin's lines, from ``def wanda(`` to its record."""
    lines = inspect.getsource(sys.modules[__name__]).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def wanda("))
    end = next(i for i, line in enumerate(lines) if line.startswith("WANDA = "))
    return lines[start : end + 1]


def test_wanda_plugin_is_short_and_documented() -> None:
    assert len(wanda_source()) <= 25, f"the Wanda plugin takes {len(wanda_source())} lines"
    docs = (REPO / "docs" / "plugins.md").read_text()
    assert "```python\n" + "\n".join(wanda_source()) + "\n```" in docs, "docs/plugins.md shows this plugin verbatim"


def test_wanda_scores_equal_direct_computation_on_bert() -> None:
    model, batches = conformance.tiny_bert(), padded_batches()
    targets = surgery.target_modules(model, "qkv")[:3]
    scores = WANDA.score(ScoreRequest(model, batches, 0, targets=targets))
    norms = torch.cat([real(bert_embeddings(model, b), b) for b in batches]).norm(dim=0)  # [in]
    modules = dict(model.named_modules())
    for name in targets:
        assert name.startswith("bert.encoder.layer.0.")
        assert torch.allclose(scores[name], modules[name].weight.detach().abs() * norms[None, :], rtol=1e-5, atol=1e-6)


def test_wanda_conforms() -> None:
    conformance.check_plugin(WANDA)


def test_wanda_on_gpt2_conv1d_with_row_pruning() -> None:
    model, batches = tiny_gpt2(), padded_batches()
    name = "transformer.h.0.attn.c_attn"
    scores = WANDA.score(ScoreRequest(model, batches, 0, targets=(name,)))[name]
    norms = torch.cat([real(gpt2_first_input(model, b), b) for b in batches]).norm(dim=0)
    weight = model.transformer.h[0].attn.c_attn.weight.detach()  # [in=32, out=96]
    assert torch.allclose(scores, weight.abs() * norms[:, None], rtol=1e-5, atol=1e-6)
    request = PruneRequest({name: scores}, 0.25, {"group": "row"}, model=model)
    mask = prune_methods.unstructured(request)[name]
    assert mask.sum(0).tolist() == [24] * 96  # each output column keeps 32 - round(0.25 * 32) inputs
