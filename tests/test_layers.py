"""The ``layer`` granularity: whole transformer blocks masked, removed, saved, scored and pruned."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config, tiny_tokenizer
from harness_plugins import layer_pruner, layer_scores

from harness import PruneRequest, ScoreRequest, conformance, surgery
from harness.errors import UsageError
from harness.granularities.layers import LAYER

pytestmark = pytest.mark.usefixtures("one_thread")

KEEP = torch.tensor([True, False, True, False])
SIZES = {
    "bert": dict(vocab_size=64, hidden_size=32, num_attention_heads=4, num_hidden_layers=4, intermediate_size=48,
                 max_position_embeddings=32),
    "gpt2": dict(vocab_size=64, n_embd=32, n_inner=48, n_layer=4, n_head=4, n_positions=32, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2),
    "llama": dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}
CASES = [("bert", "classifier"), ("bert", "base"), ("gpt2", "classifier"), ("gpt2", "lm"), ("gpt2", "base"),
         ("llama", "classifier"), ("llama", "lm"), ("llama", "base")]


def tiny(arch: str, head: str = "classifier", seed: int = 0) -> torch.nn.Module:
    """A 4-block model from a config (LLaMA with grouped-query attention: 2 key/value heads for 4 query heads)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = {"classifier": AutoModelForSequenceClassification, "lm": AutoModelForCausalLM, "base": AutoModel}[head]
    config = AutoConfig.for_model(arch, num_labels=2, **SIZES[arch])
    torch.manual_seed(seed)
    return auto.from_config(config).eval()


def batches(count: int = 2, pads: tuple[int, ...] = (0, 2, 0, 3), seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches of 4 x 7 tokens, right padded (``pads`` per row), with class labels."""
    generator = torch.Generator().manual_seed(seed)
    found = []
    for _ in range(count):
        ids = torch.randint(5, 64, (len(pads), 7), generator=generator)
        mask = torch.ones_like(ids)
        for row, pad in enumerate(pads):
            mask[row, 7 - pad:] = 0
        found.append({"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask,
                      "labels": torch.arange(len(pads)) % 2})
    return found


def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def real(x: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rows of a ``[B, T, ...]`` output at real tokens (a classifier's ``[B, C]`` logits as they are)."""
    return x[batch["attention_mask"].bool()] if x.dim() == 3 else x


# --- surgery ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, head", CASES)
def test_masked_blocks_give_the_outputs_of_removed_blocks(arch: str, head: str) -> None:
    model, batch = tiny(arch, head), batches(1)[0]
    with surgery.mask_layers(model, KEEP):
        masked = forward(model, batch)
    dense = forward(model, batch)
    removed = surgery.remove_layers(copy.deepcopy(model), KEEP)
    assert (real(masked - forward(removed, batch), batch)).abs().max() <= 1e-4
    assert not torch.allclose(real(masked, batch), real(dense, batch), atol=1e-4)  # the mask did something
    assert torch.equal(forward(model, batch), dense)  # the hooks are gone after the context


@pytest.mark.parametrize("arch", sorted(SIZES))
def test_removal_updates_the_block_list_config_and_layer_indices(arch: str) -> None:
    model = tiny(arch)
    kept_blocks = [surgery.layer_list(model)[i] for i in (0, 2)]
    before = surgery.num_layers(model)
    surgery.remove_layers(model, KEEP)
    assert before == 4 and surgery.num_layers(model) == 2 and model.config.num_hidden_layers == 2
    assert list(surgery.layer_list(model)) == kept_blocks  # the same modules, in order
    assert getattr(model.config, surgery.KEPT_LAYERS_KEY) == [0, 2]
    indices = [[m.layer_idx for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int)]
               for block in surgery.layer_list(model)]
    assert all(row for row in indices) and [set(row) for row in indices] == [{0}, {1}]
    if arch == "gpt2":
        assert model.config.n_layer == 2
    surgery.remove_layers(model, torch.tensor([False, True]))  # original indices compose
    assert getattr(model.config, surgery.KEPT_LAYERS_KEY) == [2] and model.config.num_hidden_layers == 1


def test_per_layer_config_lists_are_sliced() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    kinds = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    config = AutoConfig.for_model("qwen2", **SIZES["llama"], use_sliding_window=True, sliding_window=3,
                                  layer_types=kinds)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    batch = batches(1, pads=(0, 0))[0]
    with surgery.mask_layers(model, KEEP):
        masked = forward(model, batch)
    surgery.remove_layers(model, KEEP)
    assert model.config.layer_types == ["full_attention", "sliding_attention"]  # what blocks 0 and 2 were
    assert (masked - forward(model, batch)).abs().max() <= 1e-4


def test_removing_every_layer_or_a_wrong_mask_is_refused() -> None:
    model = tiny("bert")
    with pytest.raises(ValueError, match="cannot remove every layer"):
        surgery.remove_layers(model, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        surgery.remove_layers(model, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"), surgery.mask_layers(model, torch.ones(5, dtype=torch.bool)):
        pass
    assert surgery.num_layers(model) == 4 and model.config.num_hidden_layers == 4  # nothing touched


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_causal_lm_with_removed_layers_generates_with_its_cache(arch: str) -> None:
    model = surgery.remove_layers(tiny(arch, "lm"), KEEP)
    prompt = batches(1, pads=(0,))[0]["input_ids"]
    cached = model.generate(prompt, max_new_tokens=3, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=3, do_sample=False, use_cache=False)
    assert cached.shape == (1, 10) and torch.equal(cached, uncached)


@pytest.mark.parametrize("arch, head", [("bert", "classifier"), ("llama", "lm"), ("gpt2", "lm")])
def test_a_model_with_removed_layers_saves_and_reloads(tmp_path, arch: str, head: str) -> None:
    from transformers import AutoModelForCausalLM

    model, batch = tiny(arch, head), batches(1)[0]
    surgery.remove_heads(model, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]).bool())
    surgery.remove_layers(model, KEEP)  # heads first: the kept-head lists are sliced with the blocks
    assert len(getattr(model.config, surgery.KEPT_HEADS_KEY)) == 2
    directory = surgery.save_pruned(model, tmp_path / "pruned")
    loaded = surgery.load_pruned(directory, auto_class=AutoModelForCausalLM if head == "lm" else None)
    assert surgery.num_layers(loaded) == 2 and surgery.head_geometry(loaded).heads_per_layer == (2, 2)
    assert torch.allclose(forward(loaded, batch), forward(model, batch), atol=1e-5)


def test_count_nonzero_counts_the_names_of_removed_blocks_as_removed() -> None:
    model = tiny("llama")
    scope = LAYER.scope(model, ())
    nonzero, total = surgery.count_nonzero(model, scope)
    assert len(scope) == 4 * 7 and nonzero == total  # q, k, v, o, gate, up, down per block
    pruned = LAYER.apply(copy.deepcopy(model), KEEP)
    assert not set(scope) <= {name for name, _ in pruned.named_modules()}
    assert surgery.count_nonzero(pruned, scope)[0] == total // 2  # equal blocks: half of them left


# --- the granularity -------------------------------------------------------------------------------------------


def test_the_layer_granularity_gives_shapes_from_models_and_configs() -> None:
    assert LAYER.shapes(tiny("bert"), ()) == (4,)
    assert LAYER.config_shapes(tiny("gpt2").config) == (4,) and LAYER.config_shapes(tiny_config("bert")) == (3,)
    assert LAYER.held(tiny("bert"), KEEP) == {}  # removed physically: recovery holds nothing at zero


def test_the_layer_granularity_passes_conformance() -> None:
    conformance.check_plugin(LAYER)


@pytest.mark.parametrize("name", ["block-influence", "layer-gradient", "random-layer"])
def test_the_layer_scorers_pass_conformance(name: str) -> None:
    [scorer] = [s for s in layer_scores.harness_scorers() if s.name == name]
    conformance.check_plugin(scorer)


def test_the_layers_pruner_passes_conformance() -> None:
    [pruner] = layer_pruner.harness_pruners()
    conformance.check_plugin(pruner)


# --- scorers ---------------------------------------------------------------------------------------------------


def request(model: torch.nn.Module, calibration: list, **options) -> ScoreRequest:
    return ScoreRequest(model, calibration, seed=0, options=options)


def test_block_influence_is_one_minus_the_cosine_over_real_tokens() -> None:
    import torch.nn.functional as F

    model, calibration = tiny("bert"), batches(2)
    sums, tokens = torch.zeros(4, dtype=torch.float64), 0
    for batch in calibration:
        with torch.no_grad():
            states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True).hidden_states  # embeddings, then each block's output
        real_tokens = batch["attention_mask"].bool()
        for index in range(4):
            cosine = F.cosine_similarity(states[index], states[index + 1], dim=-1)[real_tokens]
            sums[index] += (1 - cosine).double().sum()
        tokens += int(real_tokens.sum())
    scores = layer_scores.block_influence(request(model, calibration))
    assert scores.shape == (4,) and torch.allclose(scores, (sums / tokens).float(), atol=1e-6)
    assert tokens < sum(b["input_ids"].numel() for b in calibration)  # padding was there, and left out


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_padding_does_not_change_block_influence(arch: str) -> None:
    model = tiny(arch)
    [padded] = batches(1, pads=(0, 2, 1, 3))
    alone = []
    for row in range(4):  # each example on its own, without padding
        length = int(padded["attention_mask"][row].sum())
        alone.append({k: v[row:row + 1, :length] if v.dim() == 2 else v[row:row + 1] for k, v in padded.items()})
    together = layer_scores.block_influence(request(model, [padded]))
    apart = layer_scores.block_influence(request(model, alone))
    assert torch.allclose(together, apart, atol=1e-5)
    noisy = {**padded, "input_ids": padded["input_ids"].masked_fill(padded["attention_mask"] == 0, 7)}
    assert torch.allclose(layer_scores.block_influence(request(model, [noisy])), together, atol=1e-5)


def test_layer_gradient_is_the_derivative_of_the_loss_in_each_block_gate() -> None:
    from harness import modeling

    model, [batch] = tiny("bert").double(), batches(1)
    scores = layer_scores.layer_gradient(request(model, [batch]))
    eps = 1e-5

    def loss_at(index: int, value: float) -> float:
        gate = torch.ones(4, dtype=torch.float64)
        gate[index] = value
        with surgery.LayerGates(model) as gates, torch.no_grad():
            gates.gate = gate
            return float(modeling.per_example_loss(model, batch).mean())

    numeric = torch.tensor([abs(loss_at(i, 1 + eps) - loss_at(i, 1 - eps)) / (2 * eps) for i in range(4)],
                           dtype=torch.float64)
    assert torch.allclose(scores.double(), numeric, rtol=1e-4, atol=1e-8)
    per_example = layer_scores.layer_gradient(request(model, [batch], per_example=True))
    assert per_example.shape == (4,) and (per_example >= scores - 1e-6).all()  # |mean| <= mean |.|
    assert all(p.requires_grad for p in model.parameters())  # weights unfrozen again


def test_random_layer_is_seeded_and_a_baseline() -> None:
    model = tiny("gpt2")
    [scorer] = [s for s in layer_scores.harness_scorers() if s.name == "random-layer"]
    first, again = scorer.score(request(model, [])), scorer.score(request(model, []))
    assert scorer.baseline and first.shape == (4,) and torch.equal(first, again)
    assert not torch.equal(first, scorer.score(request(model, [], offset=1)))


# --- the pruner ------------------------------------------------------------------------------------------------


def prune(scores: torch.Tensor, sparsity: float, **options) -> torch.Tensor:
    return layer_pruner.compute_mask(PruneRequest(scores, sparsity, options))


def test_the_layers_pruner_removes_the_lowest_scoring_blocks() -> None:
    scores = torch.tensor([0.3, 0.1, 0.5, 0.2, 0.4])
    assert prune(scores, 0.4).tolist() == [True, False, True, False, True]  # round(2.0): the two lowest
    assert prune(scores, 0.5).tolist() == [True, False, True, False, True]  # round(2.5) = 2
    assert prune(scores, 0.6).tolist() == [False, False, True, False, True]  # round(3.0): the three lowest
    assert prune(scores, 0.0).all()
    assert prune(torch.zeros(4), 0.5).tolist() == [False, False, True, True]  # ties: the earlier block first


def test_the_layers_pruner_never_removes_every_layer() -> None:
    with pytest.raises(UsageError, match="at most 3"):
        prune(torch.rand(4), 1.0)
    with pytest.raises(UsageError, match="at most 2"):
        prune(torch.rand(4), 0.75, min_layers=2)
    with pytest.raises(UsageError, match="min_layers=5"):
        prune(torch.rand(4), 0.0, min_layers=5)
    assert prune(torch.rand(4), 0.7).sum() == 1  # round(2.8) = 3 of 4: one block stays


# --- end to end ------------------------------------------------------------------------------------------------


def test_a_bench_removes_half_the_blocks_of_a_four_layer_bert(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    import harness

    directory = tmp_path / "tiny-bert-4"
    tokenizer = tiny_tokenizer(directory)
    config = tiny_config("bert")
    config.num_hidden_layers, config.vocab_size = 4, max(config.vocab_size, len(tokenizer))
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    result = harness.run(models=[str(directory)], plugins=["block-influence", "layers"], out=tmp_path / "out",
                         sparsities=[0.5], train_steps=2, calib_examples=8, eval_limit=16, latency_batch=2,
                         latency_tokens=8, isolation="none", progress=False)
    rows = result.rows
    assert result.ok and (rows["status"] == "ok").all(), rows["error"].tolist()
    dense = rows[rows["pruner"] == "none"].iloc[0]
    pruned = rows[rows["pruner"] == "layers"]
    assert set(pruned["scorer"]) == {"block-influence", "random-layer"}  # the random baseline joins
    assert (pruned["granularity"] == "layer").all()
    assert ((pruned["achieved_sparsity"] - 0.5).abs() <= 0.01).all()
    assert (pruned["params"] < dense["params"]).all()
