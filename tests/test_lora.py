"""Adapters ``lora``, ``dora`` and ``rslora`` (PEFT, merged) on tiny random models."""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import ARCHITECTURES, batch_for, tiny_model
from harness_plugins import finetune, lora
from test_head_plugins import token_seven_batches  # noqa: E402

from harness import TrainRequest, conformance, modeling, surgery
from harness.options import describe

pytestmark = pytest.mark.usefixtures("one_thread")
VARIANTS = tuple(lora.VARIANTS)


def train(model, variant: str = "lora", steps: int = 3, log=None, **options):
    request = TrainRequest(
        model, token_seven_batches(steps, seed=0), steps, 1e-4, 0, {**lora.OPTIONS, **options},
        log or (lambda name, value, step: None),
    )
    return lora.train(request, variant=variant)


class PeftSpy:
    """Wraps ``lora.delta_weights`` (called on the trained PEFT model just before merging) to look inside."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, batch: dict[str, torch.Tensor]) -> None:
        self.batch, self.original = batch, lora.delta_weights
        monkeypatch.setattr(lora, "delta_weights", self)

    def __call__(self, peft_model):
        from peft.tuners.lora import LoraLayer

        with torch.no_grad():
            self.logits = modeling.logits(peft_model, self.batch).clone()
        self.trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        self.peft_count = peft_model.get_nb_trainable_parameters()[0]
        self.layers = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
        self.scaling = {n: m.scaling["default"] for n, m in self.layers.items()}
        self.magnitude = {
            n: m.lora_magnitude_vector["default"].weight.detach().clone()
            for n, m in self.layers.items() if "default" in m.lora_magnitude_vector
        }
        return self.original(peft_model)


def expected_trainable(model, r: int, names: list[str], dora: bool) -> int:
    """r·(in + out) per adapted linear (+ out for DoRA's magnitude) plus the whole task head."""
    modules = dict(model.named_modules())
    count = sum(r * (modules[n].in_features + modules[n].out_features) for n in names)
    count += sum(modules[n].out_features for n in names) if dora else 0
    heads = [m for n, m in model.named_children() if n in lora.HEAD_MODULES]
    return count + sum(p.numel() for head in heads for p in head.parameters())


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_fits_a_toy_batch(variant, monkeypatch):
    model = tiny_model("bert", seed=0)
    names = lora.target_modules(model, "qv")
    expected = expected_trainable(model, 8, names, dora=variant == "dora")
    batch = token_seven_batches(1, seed=5)[0]
    with torch.no_grad():
        initial = float(modeling.per_example_loss(model, batch).mean())
    spy = PeftSpy(monkeypatch, batch)
    logged: list[tuple[str, float, int]] = []
    request = TrainRequest(
        model, [batch] * 30, 30, 1e-4, 0, {**lora.OPTIONS, "lr": 2e-2}, lambda *entry: logged.append(entry)
    )
    result = lora.train(request, variant=variant)

    assert result.steps == 30 and [step for _, _, step in logged] == list(range(1, 31))
    assert {name for name, _, _ in logged} == {"train/loss"} and result.final_loss == pytest.approx(
        sum(value for _, value, _ in logged[-3:]) / 3)  # the mean of the last tenth of 30 steps
    losses = [value for _, value, _ in logged]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    with torch.no_grad():
        assert float(modeling.per_example_loss(result.model, batch).mean()) < 0.9 * initial
    assert result.trainable_params == spy.peft_count == spy.trainable == expected
    assert result.config == {"variant": variant, "r": 8, "alpha": 16, "targets": "qv", "lr": 2e-2}
    scale = 16 / math.sqrt(8) if variant == "rslora" else 16 / 8
    assert list(spy.scaling.values()) == pytest.approx([scale] * len(names))
    assert bool(spy.magnitude) == (variant == "dora")


def test_lora_generalises_on_a_toy_signal():
    """Frozen random encoder, rank-8 q/v updates and the head: enough to find token 7 in unseen sequences."""
    model = tiny_model("bert", seed=0)
    held_out = token_seven_batches(4, seed=99)

    def held_out_loss(m) -> float:
        with torch.no_grad():
            return float(torch.cat([modeling.per_example_loss(m, b) for b in held_out]).mean())

    initial = held_out_loss(model)
    result = train(model, "lora", steps=60, lr=3e-2)
    assert held_out_loss(result.model) < 0.5 * initial
    predictions = modeling.predict(result.model, held_out)
    labels = [int(label) for b in held_out for label in b["labels"]]
    assert sum(p == y for p, y in zip(predictions, labels)) / len(labels) > 0.9


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_merged_model_is_plain_and_equals_the_peft_model(arch, variant, monkeypatch):
    from peft.tuners.lora import LoraLayer

    model = tiny_model(arch, seed=1)
    model.base_model.embeddings.requires_grad_(False)  # the caller's flags survive the adapter
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    keys, cls = list(model.state_dict()), type(model)
    probe = batch_for(model, batch_size=4, seed=3)
    spy = PeftSpy(monkeypatch, probe)
    result = train(model, variant, steps=4, lr=1e-2, targets="all")

    merged = result.model
    assert type(merged) is cls and not merged.training
    assert list(merged.state_dict()) == keys
    assert not any(isinstance(m, LoraLayer) or "lora" in n for n, m in merged.named_modules())
    assert {n: p.requires_grad for n, p in merged.named_parameters()} == flags
    with torch.no_grad():
        torch.testing.assert_close(modeling.logits(merged, probe), spy.logits, rtol=0, atol=1e-4)
    assert float((spy.logits - modeling.logits(tiny_model(arch, seed=1), probe).detach()).abs().max()) > 1e-3
    assert surgery.head_geometry(merged).total_heads == 12  # surgery still understands it


@pytest.mark.parametrize("variant", ["lora", "rslora"])
def test_updates_are_the_merged_difference(variant):
    model = tiny_model("bert", seed=2)
    original = copy.deepcopy(model.state_dict())
    result = train(model, variant, steps=5, lr=1e-2, targets="qkvo")

    assert set(result.updates) == set(lora.target_modules(tiny_model("bert"), "qkvo"))
    merged = result.model.state_dict()
    for name, delta in result.updates.items():
        assert delta.shape == original[f"{name}.weight"].shape and delta.dtype == torch.float32
        assert float(delta.abs().max()) > 1e-4  # it learned something
        torch.testing.assert_close(merged[f"{name}.weight"] - original[f"{name}.weight"], delta, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged[f"{name}.bias"], original[f"{name}.bias"], rtol=0, atol=0)
        assert torch.linalg.matrix_rank(delta.double(), atol=1e-6) <= 8
    untouched = [k for k in original if not k.startswith("classifier") and k.removesuffix(".weight") not in result.updates]
    assert all(torch.equal(merged[k], original[k]) for k in untouched)
    assert not torch.equal(merged["classifier.weight"], original["classifier.weight"])  # the head is trained


def test_dora_update_is_the_direction_only(monkeypatch):
    """DoRA merges to m ⊙ (W + ΔW)/‖W + ΔW‖ per output row: ΔW = scale·B·A, not merged − W."""
    model = tiny_model("bert", seed=3)
    original = copy.deepcopy(model.state_dict())
    spy = PeftSpy(monkeypatch, batch_for(model))
    result = train(model, "dora", steps=5, lr=1e-2)
    merged = result.model.state_dict()
    for name, delta in result.updates.items():
        direction = original[f"{name}.weight"] + delta
        expected = spy.magnitude[name][:, None] * direction / direction.norm(dim=1, keepdim=True)
        torch.testing.assert_close(merged[f"{name}.weight"], expected, rtol=0, atol=1e-5)
        assert float((merged[f"{name}.weight"] - original[f"{name}.weight"] - delta).abs().max()) > 1e-4


# --------------------------------------------------------------------------- targets


def test_targets_pick_the_right_modules():
    bert = tiny_model("bert")
    layers = range(3)
    prefix = "bert.encoder.layer"
    assert lora.target_modules(bert, "qv") == [
        f"{prefix}.{i}.attention.self.{p}" for i in layers for p in ("query", "value")
    ]
    assert lora.target_modules(bert, "ffn") == [
        f"{prefix}.{i}.{p}" for i in layers for p in ("intermediate.dense", "output.dense")
    ]
    qkvo = lora.target_modules(bert, "qkvo")
    assert f"{prefix}.0.attention.output.dense" in qkvo and f"{prefix}.0.output.dense" not in qkvo
    assert len(qkvo) == 12 and len(lora.target_modules(bert, "all")) == 18
    distil = lora.target_modules(tiny_model("distilbert"), "ffn")
    assert distil == [f"distilbert.transformer.layer.{i}.ffn.{p}" for i in layers for p in ("lin1", "lin2")]
    roberta = lora.target_modules(tiny_model("roberta"), "all")
    assert len(roberta) == 18 and not any(n.startswith(("classifier", "roberta.pooler")) for n in roberta)
    with pytest.raises(ValueError, match="targets must be one of"):
        lora.target_modules(bert, "everything")


def test_unknown_architectures_fail_clearly():
    with pytest.raises(ValueError, match="LoRA cannot pick targets 'qv' in Sequential: not a transformers model"):
        lora.target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)), "qv")
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "electra", vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=32,
    )
    electra = AutoModelForSequenceClassification.from_config(config)  # a model surgery's tables do not know
    with pytest.raises(ValueError, match="LoRA cannot pick targets 'ffn' in electra: .*architecture 'electra'"):
        lora.target_modules(electra, "ffn")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("targets,groups", [("qv", "q,v"), ("qkvo", "attention"), ("ffn", "ffn"), ("all", "linear")])
def test_targets_are_the_surgery_groups(arch, targets, groups):
    """One table: a ``targets`` choice is exactly surgery's modules of those groups, each of its kind."""
    model = tiny_model(arch)
    names = lora.target_modules(model, targets)
    assert names == list(surgery.target_modules(model, groups))
    kinds = surgery.module_groups(model)
    assert {kinds[name] for name in names} == set(lora.TARGETS[targets])


def test_llama_style_names_and_score_head():
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, num_labels=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    names = lora.target_modules(model, "all")
    assert [n.rsplit(".", 1)[-1] for n in names[:7]] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    keys = list(model.state_dict())
    result = train(model, "lora", steps=2, lr=1e-2, targets="ffn")
    assert list(result.model.state_dict()) == keys
    assert sorted(result.updates) == sorted(n for n in names if n.endswith(("gate_proj", "up_proj", "down_proj")))
    assert result.updates["model.layers.0.mlp.down_proj"].shape == (32, 48)
    assert result.trainable_params == 2 * 3 * 8 * (32 + 48) + 32 * 2  # the score head has no bias


def test_ffn_targets_train_only_the_ffn():
    model = tiny_model("bert", seed=4)
    result = train(model, steps=2, lr=1e-2, targets="ffn")
    assert sorted(result.updates) == sorted(lora.target_modules(tiny_model("bert"), "ffn"))
    assert {tuple(d.shape) for d in result.updates.values()} == {(64, 32), (32, 64)}
    assert result.config["targets"] == "ffn"


# --------------------------------------------------------------------------- after pruning


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_recovers_a_model_with_heads_removed(arch):
    model = surgery.remove_heads(tiny_model(arch, seed=5), [[0, 1], [0, 1, 2, 3], [3]])
    keys = list(model.state_dict())
    result = train(model, "lora", steps=3, lr=1e-2, targets="qkvo")
    merged = result.model
    assert surgery.head_geometry(merged).heads_per_layer == (2, 4, 1)
    assert list(merged.state_dict()) == keys
    shapes = {n: tuple(d.shape) for n, d in result.updates.items()}
    q0 = next(n for n in shapes if n.endswith(("0.attention.self.query", "0.attention.q_lin")))
    o2 = next(n for n in shapes if n.endswith(("2.attention.output.dense", "2.attention.out_lin")))
    assert shapes[q0] == (16, 32) and shapes[o2] == (32, 8)
    batch = batch_for(merged)
    assert torch.isfinite(modeling.logits(merged, batch)).all()
    surgery.remove_heads(merged, [[1], [0, 3], [0]])  # surgery keeps working on the merged model
    assert surgery.head_geometry(merged).heads_per_layer == (1, 2, 1)


def test_merging_makes_unstructured_zeros_dense_again():
    """Documents a caveat: a weight-pruned model comes back dense; the harness must re-apply its masks."""
    model = tiny_model("bert", seed=6)
    name = "bert.encoder.layer.0.attention.self.query"
    weight = dict(model.named_modules())[name].weight
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        weight[mask] = 0.0
    result = train(model, steps=3, lr=1e-2)
    merged = dict(result.model.named_modules())[name].weight.detach()
    assert float((merged[mask] != 0).float().mean()) > 0.99  # the pruned positions got ΔW
    torch.testing.assert_close(merged[mask], result.updates[name][mask], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- registration


def test_uses_only_the_public_harness_api():
    """Shaped like a third-party plugin: imports ``harness`` (public modules) and libraries, never another plugin."""
    tree = ast.parse(Path(lora.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {
        f"{node.module}.{alias.name}" for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "harness" for alias in node.names
    }
    assert not any(name.startswith(("harness_plugins", "plugins")) for name in imported)
    assert {name for name in imported if name.startswith("harness.")} <= {
        "harness.Adapter", "harness.TrainRequest", "harness.TrainResult", "harness.hookimpl",
        "harness.modeling", "harness.surgery", "harness.Options", "harness.option",
    }
    shared = {key: lora.OPTIONS[key] for key in finetune.OPTIONS}
    assert shared == dict(finetune.OPTIONS)  # the shared loop's options, at finetune's defaults


def test_adapters_are_registered_and_conform():
    records = lora.harness_adapters()
    assert [r.name for r in records] == ["lora", "dora", "rslora"]
    for record in records:
        assert dict(record.options) == dict(lora.OPTIONS)
        assert {s.name: s.choices for s in describe(record)}["targets"] == tuple(lora.TARGETS)
        conformance.check_plugin(record)
