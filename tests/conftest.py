"""Shared fixtures: tiny randomly initialised models built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ARCHITECTURES = ("bert", "roberta", "distilbert")
WORDS = (
    "the movie film plot acting cast story script was is not never but good great bad awful "
    "boring dull superb clever very really quite a an and of to it this that"
).split()


def tiny_config(arch: str, attn: str = "sdpa", **extra):
    from transformers import AutoConfig

    common = dict(vocab_size=len(WORDS) + 110, num_labels=2)
    if arch == "distilbert":
        sizes = dict(dim=32, n_heads=4, n_layers=3, hidden_dim=64, max_position_embeddings=64)
    else:
        sizes = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=3, intermediate_size=64,
                     max_position_embeddings=72, type_vocab_size=1 if arch == "roberta" else 2)
    if arch == "roberta":
        sizes["pad_token_id"] = 1
    config = AutoConfig.for_model(arch, **common, **sizes, **extra)
    config._attn_implementation = attn
    return config


def tiny_model(arch: str = "bert", seed: int = 0, attn: str = "sdpa"):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(arch, attn)).eval()


def tiny_tokenizer(directory: Path):
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = specials + WORDS + letters + [f"##{c}" for c in letters] + [".", ",", "'", "!", "?"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast.from_pretrained(str(directory))


def batch_for(model, batch_size: int = 3, tokens: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch_size, tokens), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding, so masking paths are exercised
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(batch_size) % 2}


def error_of(capsys, argv: list[str], extra: tuple[object, ...] = ()) -> str:
    """The one stderr line of a command that must fail with exit status 2 (bad input)."""
    from harness.cli import main

    capsys.readouterr()  # what fixtures printed (progress bars of saving a model) is not the command's
    status = main(argv, extra=extra)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    return lines[0]


def keep_mask(lists, heads: int = 4) -> torch.Tensor:
    mask = torch.zeros(len(lists), heads, dtype=torch.bool)
    for layer, row in enumerate(lists):
        mask[layer, row] = True
    return mask


def outputs(model, batch) -> torch.Tensor:
    from harness import modeling

    with torch.no_grad():
        return modeling.logits(model, batch)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core box spinning
    OpenMP workers slow each step down 50-fold; restored for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model_dir(tmp_path: Path):
    """A saved tiny BERT with a tokenizer: a local model folder for ``--models``."""

    def make(arch: str = "bert") -> Path:
        directory = tmp_path / f"tiny-{arch}"
        tokenizer = tiny_tokenizer(directory)
        model = tiny_model(arch)
        model.config.vocab_size = max(model.config.vocab_size, len(tokenizer))
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return directory

    return make


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache, never the user's ~/.cache."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("cache")))
