"""Task ``wikitext2``: local copies laid out like ../shared/data, the hub path (faked), the windows protocol, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import error_of
from harness_plugins import wikitext
from test_decoder_bench import llama_tokenizer
from test_language_model import decoder_dir, sentences

from harness import TaskRequest, conformance
from harness.batching import Blocks
from harness.cli import main
from harness.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")
WINDOW = 32


def write_split(path: Path, texts: list[str]) -> None:
    """WikiText's layout: a ``= title =`` heading, paragraphs, a line holding one space between them."""
    lines = [" ", " = the movie = ", " "]
    for i in range(0, len(texts), 5):
        lines += [" " + " , ".join(texts[i : i + 5]) + " . ", " "]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    texts = sentences()
    folder = tmp_path / "data" / "wikitext2"
    folder.mkdir(parents=True)
    write_split(folder / "valid.txt", texts[:300])
    write_split(folder / "test.txt", texts[300:400])
    return folder.parent


def load(data_dir: Path | None, **options: int):
    return wikitext.load(TaskRequest(data_dir, 0, options))


def test_local_splits_are_whole_documents_joined_like_the_hub_rows(data_dir):
    data = load(data_dir)
    rows = wikitext.file_rows(data_dir / "wikitext2" / "test.txt")
    assert len(rows) == 43 and rows[:3] == ["", " = the movie = \n", ""]  # a blank line is an empty row
    assert data.validation.text_a == ("\n\n".join(rows),) and len(data.train) == 1
    assert data.validation.text_a[0].startswith("\n\n = the movie = \n\n\n\n\n the")
    assert (data.kind, data.metric, data.max_length, data.train_steps) == ("causal-lm", "perplexity", 512, 0)
    assert data.protocol["window_tokens"] == 512 and data.protocol["source"].startswith("local wikitext2/")
    assert load(data_dir, max_length=WINDOW).protocol["window_tokens"] == WINDOW
    conformance.check_plugin(wikitext.harness_tasks()[0], request=TaskRequest(data_dir, 0, {}))


def test_the_hub_gives_the_same_documents(data_dir, tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_hub(path, name, split):  # the hub's rows are the files' lines (blank lines empty)
        calls.append((path, name, split))
        file = {"validation": "valid.txt", "test": "test.txt"}[split]
        return datasets.Dataset.from_dict({"text": wikitext.file_rows(data_dir / "wikitext2" / file)})

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    local, hub = load(data_dir), load(None)
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "validation"),
                     ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")]
    assert (hub.train, hub.validation) == (local.train, local.validation)
    assert hub.protocol["source"] == "hub Salesforce/wikitext/wikitext-2-raw-v1"
    assert load(tmp_path / "elsewhere").validation == local.validation  # a --data-dir without wikitext2/


def test_windows_follow_the_sparsegpt_evaluation(data_dir, tmp_path):
    """Tokenized once, non-overlapping windows, perplexity = exp(mean over windows of their mean loss)."""
    from transformers import AutoModelForCausalLM

    data = load(data_dir, max_length=WINDOW)
    tokenizer = llama_tokenizer(tmp_path / "tok")
    model = AutoModelForCausalLM.from_pretrained(decoder_dir(tmp_path / "m", "llama")).eval()
    feed = Blocks(data, tokenizer)
    ids = tokenizer(data.validation.text_a[0], add_special_tokens=False)["input_ids"]
    assert len(ids) == 1053 and feed.validation.shape == (32, WINDOW) and feed.train.shape == (97, WINDOW)
    assert feed.validation.flatten().tolist() == ids[: 32 * WINDOW]
    reference = torch.tensor(ids[: 32 * WINDOW]).view(32, WINDOW)  # SparseGPT's loop over testenc windows
    with torch.no_grad():
        nll = sum(float(model(input_ids=w[None], labels=w[None]).loss) * WINDOW for w in reference) / (32 * WINDOW)
    assert feed.quality(model, feed.evaluation(None)).score == pytest.approx(math.exp(nll), rel=1e-5)
    assert sum(len(b["input_ids"]) for b in feed.evaluation(3)) == 3  # --eval-limit: the first windows
    calibration = feed.calibration(8, 4, seed=0)
    assert [b["input_ids"].shape for b in calibration] == [(4, WINDOW)] * 2
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(calibration, feed.calibration(8, 4, 0)))


def test_missing_files_and_no_hub_are_one_line_errors(data_dir, tmp_path, monkeypatch, capsys):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UsageError, match=r"no .*elsewhere/wikitext2, and Salesforce/wikitext/wikitext-2-raw-v1 "
                                         r"cannot be loaded from the hub \(Couldn't reach"):
        load(tmp_path / "elsewhere")
    (data_dir / "wikitext2" / "test.txt").unlink()
    with pytest.raises(UsageError, match=r"wikitext2 has no test.txt \(it needs valid.txt and test.txt\)$"):
        load(data_dir)
    line = error_of(capsys, ["bench", "--tasks", "wikitext2", "--out", str(tmp_path / "o"), "--no-progress"])
    assert "no --data-dir" in line and "pass --data-dir DIR with DIR/wikitext2/valid.txt and test.txt" in line


# harness/unit.py Unit.train_steps reads `self.data.train_steps or DEFAULT_TRAIN_STEPS`: a task's 0 becomes 300


@pytest.mark.parametrize("budget", [
    pytest.param(["--train-steps", "0"], id="train-steps-0"),
    pytest.param([], id="task-default"),
])
def test_a_pretrained_llm_is_calibrated_and_pruned_without_a_fine_tune(budget, data_dir, tmp_path):
    """With 0 steps (the task's default) the dense row is the pretrained model itself; no flag for the missing fine-tune."""
    from transformers import AutoModelForCausalLM

    from harness.batching import perplexity

    model_dir = decoder_dir(tmp_path / "llama", "llama")
    out = tmp_path / "out"
    argv = ["bench", "--models", str(model_dir), "--tasks", "wikitext2", "--data-dir", str(data_dir),
            "-o", f"wikitext2.max_length={WINDOW}", "--plugins", "taylor,magnitude,unstructured,finetune",
            "--sparsities", "0.5", "--no-baselines", "--calib-examples", "8", "--batch-size", "4",
            "--latency-batch", "2", "--latency-tokens", "16", "--out", str(out), "--no-progress", *budget]
    assert main(argv) == 0
    rows = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index("scorer")
    assert (rows["status"] == "ok").all(), rows["error"]
    # Nothing flags the missing fine-tune; a random tiny LLaMA is honestly no better than the unigram model.
    assert set(rows["flags"]) <= {"", "at-chance"}, rows["flags"]
    at_chance = rows[rows["flags"] == "at-chance"]
    assert (at_chance["score"].astype(float) >= at_chance["chance"].astype(float)).all()
    pretrained = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    feed = Blocks(load(data_dir, max_length=WINDOW), llama_tokenizer(tmp_path / "tok"))
    assert rows.loc["none", "score"] == pytest.approx(perplexity(pretrained, feed.evaluation(None)), rel=1e-5)
    for scorer in ("taylor", "magnitude"):
        assert rows.loc[scorer, "achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
        assert math.isfinite(rows.loc[scorer, "score"]) and rows.loc[scorer, "score"] != rows.loc["none", "score"]
    assert rows.loc["taylor", "scoring_s"] > 0
    protocol = json.loads(rows.loc["none", "extras"])
    assert protocol["window_tokens"] == WINDOW and protocol["source"] == "local wikitext2/valid.txt, test.txt"
    windows = sum(len(batch["input_ids"]) for batch in feed.evaluation(None))
    assert windows > 2 and {json.loads(text)["eval_examples"] for text in rows["extras"]} == {windows}
