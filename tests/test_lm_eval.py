"""lm-evaluation-harness as a task: the ``lm-eval`` plugin scores the in-memory model exactly as lm-eval does.

A small multiple-choice task is built from SST-2 in ``../shared/data`` (local
JSONL and task YAMLs, nothing from a hub) and a tiny random LLaMA with a
word-level tokenizer over its words; lm-eval itself, called directly on the
same model, is the reference.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA, error_of

import harness
from harness import EvalRequest, TaskRequest, leaderboard, report
from harness.cache import digest
from harness.errors import UsageError
from harness.models import ModelSource, load_causal_lm

lm_eval = pytest.importorskip("lm_eval")
from harness_plugins import lm_eval_task  # noqa: E402  (after the skip: the plugin is only usable with the extra)

pytestmark = pytest.mark.usefixtures("one_thread")
SST2 = SHARED_DATA / "sst2" / "validation.tsv"
PROMPT = "Review: {{sentence}}\\nSentiment:"
TASKS = {"sst2_tiny": ["negative", "positive"], "sst2_tiny_uneven": ["bad", "great"]}  # equal / unequal lengths
FIRST = ("sst2_tiny/acc", "sst2_tiny/acc_norm", "sst2_tiny_uneven/acc", "sst2_tiny_uneven/acc_norm")


def sst2_rows(count: int) -> list[dict]:
    if not SST2.is_file():
        pytest.skip("no ../shared/data/sst2")
    with SST2.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:count]
    return [{"sentence": row["sentence"].strip(), "label": int(row["label"])} for row in rows]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def task_yaml(name: str, choices: list[str], files: dict[str, Path]) -> str:
    splits = "".join(f"    {split}: {path}\n" for split, path in files.items())
    train = "training_split: train\n" if "train" in files else ""
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n{splits}{train}test_split: test\n"
            f'output_type: multiple_choice\ndoc_to_text: "{PROMPT}"\ndoc_to_target: label\n'
            f"doc_to_choice: {json.dumps(choices)}\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
            "metadata:\n  version: 1.0\n")


def local_tasks(folder: Path) -> Path:
    """Two tasks on the first 40 SST-2 validation sentences; the uneven one has a training split (the next 40)."""
    rows = sst2_rows(80)
    write_jsonl(folder / "test.jsonl", rows[:40])
    write_jsonl(folder / "train.jsonl", rows[40:])
    (folder / "sst2_tiny.yaml").write_text(task_yaml("sst2_tiny", TASKS["sst2_tiny"], {"test": folder / "test.jsonl"}))
    files = {"test": folder / "test.jsonl", "train": folder / "train.jsonl"}
    (folder / "sst2_tiny_uneven.yaml").write_text(task_yaml("sst2_tiny_uneven", TASKS["sst2_tiny_uneven"], files))
    return folder


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return local_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Arrow copies of the local JSONL in a temporary folder, not the user's ~/.cache/huggingface."""
    import datasets

    folder = tmp_path_factory.mktemp("hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", folder)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(folder))  # for a unit's child process


def word_tokenizer(directory: Path, texts: list[str]):
    """A LLaMA-like word-level tokenizer (bos prepended, eos, unk, no pad) covering every word of ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({word for text in texts for word, _ in pre.pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    texts = [row["sentence"] for row in sst2_rows(80)] + ["Review: Sentiment:", *sum(TASKS.values(), [])]
    tokenizer = word_tokenizer(directory, texts)
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, intermediate_size=64, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
        initializer_range=0.5,  # wide enough that answers depend on the review (at 0.02 it picks one label throughout)
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def paths(suite: Path) -> str:
    return ",".join(str(suite / f"{name}.yaml") for name in TASKS)


def load(tasks: str, **options) -> harness.TaskData:
    return lm_eval_task.load(TaskRequest(None, 0, lm_eval_task.LmEvalOptions(tasks=tasks, **options)))


def direct(model, tokenizer, specs: list[str], limit: int | None = None) -> dict[str, float]:
    """lm-eval itself on the same in-memory model: ``simple_evaluate`` with its HF wrapper."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=8)
    out = simple_evaluate(model=lm, tasks=specs, task_manager=TaskManager(include_defaults=False), num_fewshot=0,
                          limit=limit, bootstrap_iters=0)
    return {f"{task}/{key.split(',')[0]}": value for task, metrics in out["results"].items()
            for key, value in metrics.items() if "," in key and "_stderr" not in key}


def test_the_plugin_scores_exactly_what_lm_eval_scores(suite, model_dir):
    data = load(paths(suite))
    assert data.kind == "causal-lm" and data.metric == "sst2_tiny/acc"
    model, tokenizer = load_causal_lm(ModelSource("tiny", str(model_dir)), 0)
    scores = data.evaluate(EvalRequest(model, tokenizer, 8, None, 0))
    assert tuple(scores) == FIRST  # the task's metric first, then lm-eval's order
    reference = direct(model, tokenizer, paths(suite).split(","))
    assert scores == reference  # every metric, exactly
    assert len(set(scores.values())) > 1
    assert data.evaluate(EvalRequest(model, tokenizer, 3, 7, 1)) == direct(model, tokenizer, paths(suite).split(","), 7)


def test_calibration_text_is_each_tasks_documents_with_their_gold_answer(suite):
    data = load(paths(suite), limit=5, max_length=16)
    rows = sst2_rows(80)
    assert data.train.text_a[0] == f"Review: {rows[0]['sentence']}\nSentiment: {TASKS['sst2_tiny'][rows[0]['label']]}"
    assert data.train.text_a[40] == f"Review: {rows[40]['sentence']}\nSentiment: " \
                                    f"{TASKS['sst2_tiny_uneven'][rows[40]['label']]}"
    assert len(data.train) == 80 and len(data.validation) == 10  # all of each calibration split; `limit` evaluated
    assert data.protocol["calibration"] == "sst2_tiny: test (the evaluated split); sst2_tiny_uneven: train"
    assert data.protocol["limit"] == 5 and data.max_length == 16 and data.train_steps == 0


def test_evaluating_leaves_the_global_rngs_and_the_tokenizer_as_they_were(suite, model_dir):
    data = load(str(suite / "sst2_tiny.yaml"), limit=4)
    model, tokenizer = load_causal_lm(ModelSource("tiny", str(model_dir)), 0)
    tokenizer.pad_token = None  # HFLM would set one on the tokenizer it is given
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    data.evaluate(EvalRequest(model, tokenizer, 8, None, 0))
    assert random.getstate() == before[0] and (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.get_rng_state(), before[2]) and tokenizer.pad_token is None


def grid(model_dir: Path, suite: Path, out: Path, isolation: str = "none") -> harness.api.Result:
    return harness.run(models=[str(model_dir)], tasks=["lm-eval"], options=[f"lm-eval.tasks={paths(suite)}",
                       "lm-eval.max_length=16"], plugins=["magnitude", "unstructured"], sparsities=[0.5],
                       baselines=False, train_steps=0, calib_examples=4, latency_batch=1, latency_tokens=8,
                       isolation=isolation, progress=False, out=out, dtype="float32")  # compared with float32 below


def magnitude_pruned(model_dir: Path, sparsity: float):
    """The model pruned as ``magnitude`` + ``unstructured`` prune it: the lowest |w| of each linear target."""
    from torch.nn.utils import prune

    from harness import surgery

    model, tokenizer = load_causal_lm(ModelSource("tiny", str(model_dir)), 0)
    modules = dict(model.named_modules())
    for name in surgery.target_modules(model, "linear"):
        prune.l1_unstructured(modules[name], "weight", sparsity)
        prune.remove(modules[name], "weight")
    return model.eval(), tokenizer


def test_a_grid_gives_a_row_per_cell_and_metric_and_resumes_them_all(suite, model_dir, tmp_path):
    out = tmp_path / "out"
    result = grid(model_dir, suite, out)
    rows = result.rows
    assert list(rows["status"]) == ["ok"] * 8, rows["error"].tolist()
    assert result.summary().startswith("2 ok, 0 failed")  # cells, not the 8 rows of their metrics
    assert rows["run_id"].nunique() == 8 and sorted(rows["metric"]) == sorted(FIRST * 2)
    for _, cell in rows.groupby("sparsity"):
        primary = cell.loc[cell["metric"] == FIRST[0], "run_id"].iloc[0]
        others = cell[cell["metric"] != FIRST[0]]
        assert set(others["run_id"]) == {digest({"cell": primary, "metric": m}) for m in others["metric"]}
        assert cell.iloc[-1]["run_id"] == primary  # written last: its presence means the whole cell is there
        assert cell[["latency_ms", "params", "achieved_sparsity", "extras"]].nunique().max() == 1
    extras = json.loads(rows["extras"].iloc[0])
    assert extras["source"].startswith("lm-eval ") and extras["lm_eval_tasks"] == ",".join(TASKS)
    again = grid(model_dir, suite, out)
    assert again.rows.empty and again.counts["cells_skipped"] == 2
    assert len(pd.read_csv(out / "leaderboard.csv")) == 8

    pruned = rows[rows["sparsity"] == 0.5].set_index("metric")["score"].to_dict()
    model, tokenizer = magnitude_pruned(model_dir, 0.5)
    assert pruned == pytest.approx(direct(model, tokenizer, paths(suite).split(",")), abs=1e-6)
    assert pruned != rows[rows["sparsity"] == 0].set_index("metric")["score"].to_dict()  # pruning changed answers


def test_the_aggregate_and_the_report_keep_metrics_apart(suite, model_dir, tmp_path):
    out = tmp_path / "out"
    assert grid(model_dir, suite, out, isolation="process").counts["cells_skipped"] == 0  # evaluated in a child
    table = leaderboard.aggregate(leaderboard.read(out / "leaderboard.csv"))
    assert len(table) == 8 and sorted(table["metric"]) == sorted(FIRST * 2)
    for _, row in table.iterrows():  # each metric's dense reference is its own dense score
        dense = table[(table["metric"] == row["metric"]) & (table["sparsity"] == 0)]
        assert row["dense_mean"] == dense["score_mean"].iloc[0]
    folder = report.build(out)
    names = sorted(p.name for p in folder.glob("*.png"))
    assert len(names) == 8 and all("sst2_tiny" in name for name in names)
    assert f"{model_dir.name.replace('-', '_')}-lm_eval-finetune-sst2_tiny_acc_norm-sparsity.png" in names


def test_bad_input_is_one_line(suite, monkeypatch, capsys, model_dir, tmp_path):
    with pytest.raises(UsageError, match=r"needs -o lm-eval.tasks="):
        load("")
    with pytest.raises(UsageError, match=r"no task file"):
        load(str(suite / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text(task_yaml("sst2_broken", ["a", "b"], {"test": tmp_path / "nowhere.jsonl"}))
    with pytest.raises(UsageError, match=r"lm-eval task .*broken.yaml: its data cannot be loaded .*dataset_path: json"):
        load(f"{suite / 'sst2_tiny.yaml'},{broken}")
    monkeypatch.setattr(lm_eval_task, "manager", lambda include, defaults, built=lm_eval_task.manager:
                        built(include, False))  # lm-eval's own index of 14,000 tasks takes 8-18 s to scan
    if os.environ.get("HF_DATASETS_OFFLINE") == "1":  # online, this would wait for the network instead
        hub = tmp_path / "hub.yaml"
        hub.write_text(task_yaml("sst2_hub", ["a", "b"], {}).replace("dataset_path: json", "dataset_path: nyu-mll/glue"))
        with pytest.raises(UsageError, match=r"hub.yaml: its data cannot be loaded .*offline, use a local task YAML"):
            load(str(hub))
    line = error_of(capsys, ["bench", "--models", str(model_dir), "--tasks", "lm-eval", "--out", str(tmp_path / "o"),
                             "-o", "lm-eval.tasks=sst2_tiny,sst2_tny", "-o", f"lm-eval.include_path={suite}"])
    assert "lm-eval has no task 'sst2_tny' (did you mean sst2_tiny" in line
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UsageError, match=r"^task lm-eval needs the optional extra: pip install 'prune-harness\[lm-eval\]'$"):
        load(paths(suite))
