"""harness.spectra: singular values, effective ranks, tables and plots of known updates ΔW."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import tiny_model

from harness import spectra, surgery


def known_update(sigma: list[float], rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """U diag(σ) Vᵀ with orthonormal U [rows, k] and V [cols, k] from QR: singular values exactly σ."""
    generator = torch.Generator().manual_seed(seed)
    k = len(sigma)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=generator, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ v.T


def by_hand_entropy_rank(sigma: list[float]) -> float:
    p = [s / sum(sigma) for s in sigma if s > 0]
    return math.exp(-sum(x * math.log(x) for x in p))


SIGMA_Q = [4.0, 2.0, 1.0, 0.5]  # energy 16, 4, 1, .25 of 21.25: 75.3 %, 94.1 % -> k = 2
SIGMA_V = [3.0, 3.0, 3.0]  # flat: entropy rank 3, energy: 33, 67, 100 % -> k = 3
SIGMA_FFN = [10.0, 1.0]  # 99 % in the first -> k = 1


def tiny_llama():
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, num_labels=2, pad_token_id=0,
    )
    return AutoModelForSequenceClassification.from_config(config)


def bert_kinds() -> dict[str, str]:
    return surgery.module_groups(tiny_model("bert"))


def bert_updates() -> dict[str, torch.Tensor]:
    return {
        "bert.encoder.layer.1.attention.self.query": known_update(SIGMA_Q, 16, 12, seed=1).float(),
        "bert.encoder.layer.0.attention.self.query": known_update(SIGMA_Q[:2], 16, 12, seed=2).float(),
        "bert.encoder.layer.0.attention.self.value": known_update(SIGMA_V, 16, 12, seed=3).float(),
        "bert.encoder.layer.0.output.dense": known_update(SIGMA_FFN, 12, 20, seed=4).float(),
        "bert.encoder.layer.0.attention.output.dense": known_update([1.0], 12, 16, seed=5).float(),
    }


@pytest.mark.parametrize(
    "arch,name,kind,layer",
    [
        ("bert", "bert.encoder.layer.2.attention.self.query", "q", 2),
        ("roberta", "roberta.encoder.layer.1.attention.self.key", "k", 1),
        ("bert", "bert.encoder.layer.0.attention.self.value", "v", 0),
        ("bert", "bert.encoder.layer.2.attention.output.dense", "o", 2),
        ("bert", "bert.encoder.layer.2.intermediate.dense", "ffn_in", 2),
        ("bert", "bert.encoder.layer.2.output.dense", "ffn_out", 2),
        ("distilbert", "distilbert.transformer.layer.1.attention.q_lin", "q", 1),
        ("distilbert", "distilbert.transformer.layer.1.attention.out_lin", "o", 1),
        ("distilbert", "distilbert.transformer.layer.1.ffn.lin1", "ffn_in", 1),
        ("distilbert", "distilbert.transformer.layer.1.ffn.lin2", "ffn_out", 1),
        ("llama", "model.layers.5.self_attn.v_proj", "v", 5),
        ("llama", "model.layers.5.self_attn.o_proj", "o", 5),
        ("llama", "model.layers.5.mlp.gate_proj", "ffn_in", 5),
        ("llama", "model.layers.5.mlp.up_proj", "ffn_in", 5),
        ("llama", "model.layers.5.mlp.down_proj", "ffn_out", 5),
        ("bert", "bert.pooler.dense", "other", -1),
        ("roberta", "classifier.out_proj", "other", -1),
        ("distilbert", "pre_classifier", "other", -1),
    ],
)
def test_kinds_come_from_the_surgery_table(arch, name, kind, layer):
    """Kinds are whatever ``surgery.module_groups`` says; names it does not list (heads, pooler) are "other"."""
    model = tiny_llama() if arch == "llama" else tiny_model(arch)
    assert name in dict(model.named_modules())
    kinds = surgery.module_groups(model)
    update = {name: torch.ones(2, 3)}
    assert spectra.summary(update, kinds)["kind"].tolist() == [kind]
    assert set(spectra.spectra(update, kinds)["kind"]) == {kind}
    assert spectra.layer_index(name) == layer


def test_kinds_are_passed_not_guessed():
    """The same name takes whatever kind the caller's mapping gives it."""
    update = {"encoder.3.some_projection": torch.ones(2, 3)}
    assert spectra.summary(update, {"encoder.3.some_projection": "v"})["kind"].tolist() == ["v"]
    assert spectra.summary(update, {})["kind"].tolist() == ["other"]
    assert spectra.summary(update, {})["layer"].tolist() == [3]


def test_singular_values_and_ranks_of_known_updates():
    for sigma in (SIGMA_Q, SIGMA_V, SIGMA_FFN, [5.0, 0.3, 0.2, 0.1, 0.05]):
        delta = known_update(sigma, 24, 10, seed=len(sigma)).float()
        values = spectra.singular_values(delta)
        assert values.dtype == torch.float64 and values.shape == (10,)
        torch.testing.assert_close(values[: len(sigma)], torch.tensor(sigma, dtype=torch.float64), rtol=0, atol=1e-6)
        assert float(values[len(sigma) :].abs().max()) < 1e-6  # rank len(sigma): the rest are numerical zeros
        assert spectra.entropy_rank(values) == pytest.approx(by_hand_entropy_rank(sigma), abs=1e-5)
    assert spectra.entropy_rank(torch.tensor([3.0, 3.0, 3.0])) == pytest.approx(3.0, abs=1e-12)
    assert spectra.entropy_rank(torch.tensor([2.0, 0.0])) == pytest.approx(1.0, abs=1e-12)
    assert spectra.energy_rank(torch.tensor(SIGMA_Q)) == 2
    assert spectra.energy_rank(torch.tensor(SIGMA_V)) == 3
    assert spectra.energy_rank(torch.tensor(SIGMA_FFN)) == 1
    assert spectra.energy_rank(torch.tensor(SIGMA_Q), fraction=0.7) == 1
    assert spectra.energy_rank(torch.tensor(SIGMA_Q), fraction=0.95) == 3
    assert spectra.entropy_rank(torch.zeros(4)) == 0.0 and spectra.energy_rank(torch.zeros(4)) == 0


def test_spectra_table():
    table = spectra.spectra(bert_updates(), bert_kinds())
    assert tuple(table.columns) == spectra.SPECTRUM_COLUMNS
    assert len(table) == 12 + 12 + 12 + 12 + 12  # min(rows, cols) values per module
    first = table[table["module"] == "bert.encoder.layer.1.attention.self.query"]
    assert first["index"].tolist() == list(range(1, 13))
    assert set(first["kind"]) == {"q"} and set(first["layer"]) == {1}
    assert first["singular_value"].head(4).tolist() == pytest.approx(SIGMA_Q, abs=1e-6)
    assert first["normalised"].head(4).tolist() == pytest.approx([1.0, 0.5, 0.25, 0.125], abs=1e-6)
    assert table["module"].drop_duplicates().tolist()[0].startswith("bert.encoder.layer.0.")  # by layer


def test_summary_and_median_ranks():
    table = spectra.summary(bert_updates(), bert_kinds())
    assert tuple(table.columns) == spectra.SUMMARY_COLUMNS
    rows = table.set_index("module")
    query1 = rows.loc["bert.encoder.layer.1.attention.self.query"]
    assert (query1["kind"], query1["layer"], query1["rows"], query1["cols"]) == ("q", 1, 16, 12)
    assert query1["sigma_max"] == pytest.approx(4.0, abs=1e-6)
    assert query1["frobenius"] == pytest.approx(math.sqrt(21.25), abs=1e-6)
    assert query1["effective_rank_entropy"] == pytest.approx(by_hand_entropy_rank(SIGMA_Q), abs=1e-5)
    assert query1["energy90_rank"] == 2
    ffn = rows.loc["bert.encoder.layer.0.output.dense"]
    assert (ffn["kind"], ffn["energy90_rank"]) == ("ffn_out", 1)
    assert rows.loc["bert.encoder.layer.0.attention.output.dense", "kind"] == "o"

    medians = spectra.median_ranks(table)
    assert set(medians) == {"erank_q", "erank_v", "erank_o", "erank_ffn_out"}
    expected_q = (by_hand_entropy_rank(SIGMA_Q) + by_hand_entropy_rank(SIGMA_Q[:2])) / 2  # median of two
    assert medians["erank_q"] == pytest.approx(expected_q, abs=1e-5)
    assert medians["erank_v"] == pytest.approx(3.0, abs=1e-5)
    assert spectra.median_ranks(table, "energy90_rank", "rank90")["rank90_q"] == 2.0  # median of 2 and 2


def test_write_csv_is_atomic_and_round_trips(tmp_path):
    table = spectra.summary(bert_updates(), bert_kinds())
    path = spectra.write_csv(table, tmp_path / "deep" / "spectra.csv")
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["spectra.csv"]  # no temporary left
    back = pd.read_csv(path)
    assert back["module"].tolist() == table["module"].tolist()
    assert back["energy90_rank"].tolist() == table["energy90_rank"].tolist()
    spectra.write_csv(table.head(1), path)  # replaces in place
    assert len(pd.read_csv(path)) == 1


def test_plot_writes_a_png(tmp_path):
    from matplotlib.image import imread

    path = spectra.plot(spectra.spectra(bert_updates(), bert_kinds()), tmp_path / "spectra.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    width = image.shape[1]
    assert image.ndim == 3 and image.shape[0] > 100
    assert width > 4 * 300  # four panels: q, v, o, ffn_out
    assert [p.name for p in tmp_path.iterdir()] == ["spectra.png"]


def test_plot_labels_two_modules_of_one_kind_in_a_layer(tmp_path, monkeypatch):
    """LLaMA has two FFN inputs per layer: their curves are told apart by their last name component."""
    from matplotlib.axes import Axes

    model = tiny_llama()
    names = [n for n, kind in surgery.module_groups(model).items() if kind in ("ffn_in", "o") and ".0." in n]
    updates = {name: known_update([1.0, 0.5], 8, 6, seed=i).float() for i, name in enumerate(names)}
    labels: list[str] = []
    original = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: labels.append(k.get("label")) or original(self, *a, **k))
    spectra.plot(spectra.spectra(updates, surgery.module_groups(model)), tmp_path / "llama.png")
    assert labels == ["layer 0", "layer 0 gate_proj", "layer 0 up_proj"]
