"""Head surgery on tiny random decoders: GPT-2 (fused Conv1D q/k/v), LLaMA / Qwen2 / Mistral (grouped-query).

The same checks as the encoder tests (gates, masks, removal, save/reload), plus the
grouped-attention rules: a key/value head goes only with all of its query heads, and
the key/value heads that stay keep equal numbers of query heads.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import count, keep_mask, outputs

from harness import modeling, surgery

pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = ("sdpa", "eager")
DECODERS = ("gpt2", "llama", "qwen2", "mistral", "llama-mqa")
GROUPED = ("llama", "qwen2", "mistral")  # 6 query heads, 2 key/value heads: groups {0,1,2}, {3,4,5}
VOCAB, PAD = 120, 0
# uneven: 4 / 3 / 1 of 6 heads; GQA: both groups keep 2, group 0 goes, group 1 keeps 1
KEEP_LISTS = [[0, 2, 3, 5], [3, 4, 5], [1]]
KV_KEPT = {"gqa": [[0, 1], [1], [0]], "mqa": [[0], [0], [0]]}


def decoder_config(arch: str, attn: str = "sdpa"):
    from transformers import AutoConfig

    common = dict(vocab_size=VOCAB, num_labels=2, pad_token_id=PAD, initializer_range=0.2)
    if arch == "gpt2":
        sizes = dict(n_embd=48, n_head=6, n_layer=3, n_positions=64, bos_token_id=1, eos_token_id=2)
    else:
        sizes = dict(hidden_size=48, num_attention_heads=6, num_hidden_layers=3, intermediate_size=64,
                     max_position_embeddings=64, num_key_value_heads=1 if arch == "llama-mqa" else 2,
                     bos_token_id=1, eos_token_id=2)
    config = AutoConfig.for_model(arch.replace("-mqa", ""), **common, **sizes)
    config._attn_implementation = attn
    return config


def tiny_decoder(arch: str, seed: int = 0, attn: str = "sdpa", causal: bool = False):
    """Logits of order one (init 0.2), so differences that matter are far above the tolerances."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    return auto.from_config(decoder_config(arch, attn)).eval()


def decoder_batch(batch_size: int = 4, tokens: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded like the harness's tokenizers: padding positions hold the pad id and mask 0."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch_size, tokens), generator=generator)
    mask = torch.ones_like(ids)
    ids[0, -3:], mask[0, -3:] = PAD, 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(batch_size) % 2}


def kv_of(arch: str) -> int:
    return {"gpt2": 6, "llama-mqa": 1}.get(arch, 2)


arch_backend = pytest.mark.parametrize("arch,attn", [(a, b) for a in DECODERS for b in BACKENDS])


@arch_backend
def test_geometry_and_all_ones_gates(arch, attn):
    model = tiny_decoder(arch, seed=1, attn=attn)
    geometry = surgery.head_geometry(model)
    assert geometry.heads_per_layer == (6, 6, 6) and geometry.head_dim == 8
    assert geometry.kv_heads_per_layer == (() if arch == "gpt2" else (kv_of(arch),) * 3)
    assert surgery.heads.config_geometry(model.config) == geometry
    batch = decoder_batch(seed=1)
    reference = outputs(model, batch)
    with surgery.HeadGates(model) as gates:
        gates.gate = torch.ones(3, 6)
        gated = outputs(model, batch)
        gates.gate = torch.ones(4, 3, 6)  # per example
        per_example = outputs(model, batch)
    torch.testing.assert_close(gated, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(per_example, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(outputs(model, batch), reference, rtol=0, atol=0)


def assert_shapes(model, arch: str, heads: tuple[int, ...], kv: tuple[int, ...]) -> None:
    layout, hidden = surgery.layout_of(model), 48
    for layer, n, k in zip(surgery._layers(model), heads, kv):
        attention = surgery._get(layer, layout.attention)
        o = surgery._get(layer, layout.o)
        if arch == "gpt2":
            assert tuple(attention.c_attn.weight.shape) == (hidden, 3 * n * 8) and attention.c_attn.nf == 3 * n * 8
            assert attention.num_heads == n and attention.split_size == n * 8 and attention.embed_dim == hidden
            assert tuple(o.weight.shape) == (n * 8, hidden) and o.nx == n * 8
            continue
        assert tuple(attention.q_proj.weight.shape) == (n * 8, hidden) and attention.q_proj.out_features == n * 8
        for proj in (attention.k_proj, attention.v_proj):
            assert tuple(proj.weight.shape) == (k * 8, hidden) and proj.out_features == k * 8
            if arch == "qwen2":
                assert tuple(proj.bias.shape) == (k * 8,)
        assert attention.num_key_value_groups == n // k
        assert tuple(o.weight.shape) == (hidden, n * 8) and o.in_features == n * 8


@arch_backend
def test_remove_equals_mask(arch, attn):
    model = tiny_decoder(arch, seed=3, attn=attn)
    batch = decoder_batch(seed=5)
    with surgery.mask_heads(model, keep_mask(KEEP_LISTS, 6)):
        masked = outputs(model, batch)
    assert (masked - outputs(model, batch)).abs().max() > 1e-2  # masking really does something
    before = count(model)
    assert surgery.remove_heads(model, keep_mask(KEEP_LISTS, 6)) is model
    torch.testing.assert_close(outputs(model, batch), masked, rtol=0, atol=1e-4)
    no_padding = {"input_ids": batch["input_ids"][1:]}  # sdpa's own GQA path (no mask) in transformers 5
    with torch.no_grad():
        model(**no_padding)

    geometry = surgery.head_geometry(model)
    kv = {"gpt2": (4, 3, 1), "llama-mqa": (1, 1, 1)}.get(arch, (2, 1, 1))
    assert geometry.heads_per_layer == (4, 3, 1) and geometry.head_dim == 8
    assert geometry.kv_heads_per_layer == (() if arch == "gpt2" else kv)
    assert_shapes(model, arch, (4, 3, 1), kv)
    assert model.config.harness_kept_heads == KEEP_LISTS
    if arch != "gpt2":
        assert model.config.harness_kept_kv_heads == KV_KEPT["mqa" if arch == "llama-mqa" else "gqa"]
    qo = 2 * 48 * 8 + (8 if arch in ("gpt2", "qwen2") else 0)  # one head's q rows and o columns (+ q bias)
    kv_head = 2 * (48 * 8 + (8 if arch in ("gpt2", "qwen2") else 0))
    assert before - count(model) == 10 * qo + (3 * kv_of(arch) - sum(kv)) * kv_head


@pytest.mark.parametrize("arch", DECODERS)
def test_removed_weights_are_the_kept_slices(arch):
    dense = tiny_decoder(arch, seed=4)
    pruned = surgery.remove_heads(copy.deepcopy(dense), KEEP_LISTS)
    kv_lists = KEEP_LISTS if arch == "gpt2" else KV_KEPT["mqa" if arch == "llama-mqa" else "gqa"]
    for a, b, heads, groups in zip(surgery._layers(dense), surgery._layers(pruned), KEEP_LISTS, kv_lists):
        rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in heads])
        kv_rows = torch.cat([torch.arange(g * 8, g * 8 + 8) for g in groups])
        if arch == "gpt2":
            index = torch.cat([rows, kv_rows + 48, kv_rows + 96])
            assert torch.equal(b.attn.c_attn.weight, a.attn.c_attn.weight[:, index])
            assert torch.equal(b.attn.c_attn.bias, a.attn.c_attn.bias[index])
            assert torch.equal(b.attn.c_proj.weight, a.attn.c_proj.weight[rows])
            continue
        assert torch.equal(b.self_attn.q_proj.weight, a.self_attn.q_proj.weight[rows])
        assert torch.equal(b.self_attn.k_proj.weight, a.self_attn.k_proj.weight[kv_rows])
        assert torch.equal(b.self_attn.v_proj.weight, a.self_attn.v_proj.weight[kv_rows])
        assert torch.equal(b.self_attn.o_proj.weight, a.self_attn.o_proj.weight[:, rows])


@arch_backend
def test_save_and_reload(arch, attn, tmp_path):
    base = tiny_decoder(arch, seed=6, attn=attn)
    model = surgery.remove_heads(copy.deepcopy(base), keep_mask(KEEP_LISTS, 6))
    batch = decoder_batch(seed=3)
    expected = outputs(model, batch)
    directory = surgery.save_pruned(model, tmp_path / "pruned", base_model="x")
    record = json.loads((directory / "head_mask.json").read_text())
    assert record["base_model"] == "x" and record["kept_heads"] == KEEP_LISTS
    assert record["head_mask"] == keep_mask(KEEP_LISTS, 6).tolist()
    if arch == "gpt2":
        assert "kept_kv_heads" not in record
    else:
        kv = KV_KEPT["mqa" if arch == "llama-mqa" else "gqa"]
        assert record["kept_kv_heads"] == kv
        assert record["kv_head_mask"] == keep_mask(kv, heads=kv_of(arch)).tolist()

    loaded = surgery.load_pruned(directory)
    assert not loaded.training and count(loaded) == count(model)
    assert surgery.head_geometry(loaded) == surgery.head_geometry(model)
    assert surgery.heads.config_geometry(loaded.config) == surgery.head_geometry(model)
    torch.testing.assert_close(outputs(loaded, batch), expected, rtol=0, atol=1e-5)
    fresh = surgery.remove_heads(tiny_decoder(arch, seed=6, attn=attn), record["kept_heads"])
    torch.testing.assert_close(outputs(fresh, batch), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", DECODERS)
def test_removing_twice_equals_removing_once(arch, tmp_path):
    first = [[0, 1, 2, 3, 4, 5], [1, 2, 4, 5], [0, 1, 2]]
    second = [[3, 4, 5], [0, 2], [2]]  # relative to the heads left after ``first``
    combined = [[3, 4, 5], [1, 4], [2]]
    twice = tiny_decoder(arch, seed=5)
    once = copy.deepcopy(twice)
    surgery.remove_heads(twice, first)
    surgery.remove_heads(twice, keep_mask(second, 6))  # a bool mask over the current (at most 6) heads
    surgery.remove_heads(once, combined)
    assert twice.config.harness_kept_heads == once.config.harness_kept_heads == combined
    if arch in GROUPED:
        assert twice.config.harness_kept_kv_heads == once.config.harness_kept_kv_heads == [[1], [0, 1], [0]]
    batch = decoder_batch(seed=2)
    torch.testing.assert_close(outputs(twice, batch), outputs(once, batch), rtol=0, atol=1e-6)
    loaded = surgery.load_pruned(surgery.save_pruned(twice, tmp_path / "twice"))
    torch.testing.assert_close(outputs(loaded, batch), outputs(once, batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", GROUPED)
def test_unequal_groups_are_refused_before_any_weight_moves(arch):
    model = tiny_decoder(arch, seed=11)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer 1: kept query heads \[0, 1, 3\] leave \[2, 1\] per key/value group"):
        surgery.remove_heads(model, [[0, 1, 2, 3, 4, 5], [0, 1, 3], [0]])
    with pytest.raises(ValueError, match="every head of layer 2"):
        surgery.remove_heads(model, [[0], [1], []])
    with pytest.raises(ValueError, match="cannot keep"):
        surgery.remove_heads(model, [[0], [1], [6]])
    assert surgery.head_geometry(model).heads_per_layer == (6, 6, 6)
    assert getattr(model.config, surgery.KEPT_HEADS_KEY, None) is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama-mqa"])
def test_per_example_gate_gradients_on_a_pruned_decoder(arch):
    model = surgery.remove_heads(tiny_decoder(arch, seed=8, attn="eager"), KEEP_LISTS)
    batch = decoder_batch(batch_size=3, seed=4)
    heads = (4, 3, 1)
    gates = [torch.ones(3, n, requires_grad=True) for n in heads]
    with surgery.HeadGates(model) as hooks:
        hooks.gate = gates
        grads = torch.autograd.grad(modeling.per_example_loss(model, batch).sum(), gates)
    assert max(float(g.abs().max()) for g in grads) > 1e-4
    for b in range(3):
        shared = [torch.ones(n, requires_grad=True) for n in heads]
        with surgery.HeadGates(model) as hooks:
            hooks.gate = shared
            alone = torch.autograd.grad(modeling.per_example_loss(model, batch)[b], shared)
        for layer in range(3):
            torch.testing.assert_close(grads[layer][b], alone[layer], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_pruned_causal_lm_generates_like_the_masked_one(arch, tmp_path):
    """Causal LMs too: the key/value cache holds the pruned heads; tied embeddings survive reload."""
    from transformers import AutoModelForCausalLM

    model = tiny_decoder(arch, seed=12, causal=True)
    prompt = torch.randint(5, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    with torch.no_grad(), surgery.mask_heads(model, keep_mask(KEEP_LISTS, 6)):
        masked = model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
        masked_logits = model(prompt).logits
    surgery.remove_heads(model, KEEP_LISTS)
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, masked_logits, rtol=0, atol=1e-4)
        assert torch.equal(model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings), masked)
    loaded = surgery.load_pruned(surgery.save_pruned(model, tmp_path / "lm"), auto_class=AutoModelForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(prompt).logits, model(prompt).logits, rtol=0, atol=1e-5)
