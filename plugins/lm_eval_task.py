"""Task ``lm-eval``: lm-evaluation-harness tasks scored on the in-memory model of every cell.

``-o lm-eval.tasks=hellaswag,piqa`` (lm-eval task or group names, and/or paths of
task YAML files) runs those tasks through lm-eval's HF model wrapper (``HFLM``)
on the model as the cell has it, dense or pruned: no save and reload round
trip. Every non-stderr metric of every task (and group) becomes its own
leaderboard row, named ``<task>/<metric>`` (``,<filter>`` kept unless it is
``none``); the task's first metric is the cell's primary row.

Pruning needs calibration text and ``--train-steps`` needs training text: both
are each task's documents rendered as the model sees them (the prompt, the
target delimiter and the gold answer), from its training split if it has one,
else its validation split, else the evaluated split. ``protocol`` (every row's
``extras``) says which.

Offline, a task whose data is on a hub cannot be loaded; a local task YAML
(``dataset_path: json`` with ``dataset_kwargs.data_files``) works the same way.
lm-eval is an optional extra, imported only when this task is used.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from harness import EvalRequest, Options, Split, Task, TaskData, TaskRequest, hookimpl, option
from harness.errors import UsageError

EXTRA = "task lm-eval needs the optional extra: pip install 'prune-harness[lm-eval]'"
DOCS = 2000  # rendered documents per lm-eval task, at most, for calibration and training (and the feed's eval text)
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed: the same few-shot examples as `lm_eval` itself
QUIET_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")  # their tqdm bars


@dataclass(frozen=True)
class LmEvalOptions(Options):
    """Options of ``lm-eval``: which lm-eval tasks, how many documents, and the calibration window."""

    tasks: str = option("", help="lm-eval task names and/or task YAML paths, comma-separated (required)")
    include_path: str = option("", help="a folder of extra task YAMLs, found by their task names")
    limit: int = option(0, low=0, help="documents per lm-eval task, the first ones (0 = all); --eval-limit caps it")
    num_fewshot: int = option(0, low=0, help="few-shot examples per prompt (a task whose YAML says 0 keeps 0)")
    max_length: int = option(512, low=2, help="tokens per calibration and training window")
    train_steps: int = option(0, low=0, help="default fine-tuning budget: 0 prunes the pretrained weights")


@dataclass(frozen=True)
class Suite:
    """What evaluating needs, small enough to ship to a unit's child process with the plan."""

    specs: tuple[str, ...]  # lm-eval task names, or absolute paths of task YAML files
    include_path: str | None
    defaults: bool  # whether lm-eval's own 14,000 tasks are indexed (about 8 s): only when a name needs them
    limit: int | None
    num_fewshot: int
    metrics: tuple[str, ...]  # the leaf tasks' metric names, in order: the first is the task's primary metric


def _first(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _specs(text: str) -> tuple[str, ...]:
    """Task names as given; YAML files as absolute paths (a unit's child resolves nothing against its cwd)."""
    specs = [item.strip() for item in text.split(",") if item.strip()]
    if not specs:
        raise UsageError("task lm-eval needs -o lm-eval.tasks=NAME[,NAME...]: lm-eval task names or task YAML files")
    resolved = []
    for spec in specs:
        if spec.endswith((".yaml", ".yml")):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise UsageError(f"lm-eval: no task file {spec}")
            spec = str(path)
        resolved.append(spec)
    return tuple(resolved)


@functools.lru_cache(maxsize=4)
def manager(include_path: str | None, defaults: bool) -> Any:
    """lm-eval's task index, built once per process (the default one scans every built-in task)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def _choose_manager(specs: tuple[str, ...], include_path: str | None) -> tuple[Any, bool]:
    """The cheapest index that knows every name: ``include_path`` alone when it does; unknown names are errors."""
    import difflib

    names = [spec for spec in specs if not spec.endswith((".yaml", ".yml"))]
    local = manager(include_path, False)  # nothing but include_path (files are found by path)
    defaults = any(name not in local.all_tasks for name in names)
    tm = manager(include_path, True) if defaults else local
    for name in names:
        if name not in tm.all_tasks:
            close = difflib.get_close_matches(name, tm.all_tasks, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"lm-eval has no task {name!r}{hint}; give a name or a task YAML file")
    return tm, defaults


def _load(tm: Any, specs: tuple[str, ...]) -> dict:
    """The tasks, or a one-line error naming the one whose data cannot be loaded (offline: a hub dataset)."""
    try:
        return tm.load(list(specs))
    except Exception as error:
        together = error
    for spec in specs:  # which one: each alone
        try:
            tm.load([spec])
        except Exception as error:
            raise UsageError(f"lm-eval task {spec}: its data cannot be loaded ({_first(error)}); offline, use a "
                             "local task YAML with dataset_path: json and dataset_kwargs.data_files") from None
    raise UsageError(f"lm-eval tasks {', '.join(specs)}: {_first(together)}") from None


def _prepared(suite: Suite) -> dict:
    """Fresh task objects with ``lm_eval.simple_evaluate``'s few-shot settings: the same prompts as lm-eval's."""
    loaded = _load(manager(suite.include_path, suite.defaults), suite.specs)
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") != 0:  # a YAML that says 0 means it, as simple_evaluate keeps it
            task.set_config(key="num_fewshot", value=suite.num_fewshot)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
    return loaded


def _silent_tqdm(*args: Any, **kwargs: Any) -> Any:
    from tqdm import tqdm

    return tqdm(*args, **{**kwargs, "disable": True})


@contextmanager
def contained() -> Iterator[None]:
    """lm-eval without logs or progress bars, and the global RNGs left as they were (a later cell draws the same)."""
    import importlib
    import logging
    import random
    from unittest import mock

    import datasets
    import numpy as np
    import torch

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    states = random.getstate(), np.random.get_state()
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            for name in QUIET_MODULES:
                stack.enter_context(mock.patch.object(importlib.import_module(name), "tqdm", _silent_tqdm))
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def results(found: Mapping[str, Mapping[str, Any]], expected: tuple[str, ...]) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` of lm-eval's ``results`` (stderr left out), the expected names first."""
    scores: dict[str, float] = {}
    for task, metrics in found.items():
        for key, value in metrics.items():
            metric, _, kept = key.partition(",")
            if kept and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                scores[f"{task}/{metric}" + ("" if kept == "none" else f",{kept}")] = float(value)
    return {**{name: scores[name] for name in expected if name in scores}, **scores}


def evaluate(suite: Suite, request: EvalRequest) -> dict[str, float]:
    """Every metric of every task on the request's model through lm-eval's ``HFLM``, as the model is in memory.

    HFLM sets a pad token on the tokenizer it gets, so it gets a copy; it also
    calls ``model.eval()`` and ``tie_weights()`` (harmless: pruning never
    replaces the embeddings or the LM head).
    """
    import copy

    from lm_eval.evaluator import evaluate as run
    from lm_eval.models.huggingface import HFLM

    limits = [n for n in (suite.limit, request.limit) if n]
    with contained():
        loaded = _prepared(suite)
        lm = HFLM(pretrained=request.model, tokenizer=copy.deepcopy(request.tokenizer), backend="causal",
                  batch_size=request.batch_size)
        out = run(lm=lm, task_dict=loaded, limit=min(limits) if limits else None, bootstrap_iters=0,
                  log_samples=False)
    return results(out["results"], suite.metrics)


def render(task: Any, doc: Mapping[str, Any]) -> str:
    """A document as the model reads it with its gold answer: the prompt, the target delimiter and the answer."""
    text, target = task.doc_to_text(doc), task.doc_to_target(doc)
    choices = task.doc_to_choice(doc) if task.OUTPUT_TYPE == "multiple_choice" else None
    if isinstance(text, int) and choices:  # multiple-input tasks (winogrande): the context is a choice
        text = choices[text]
    if isinstance(target, list):
        target = target[0]
    if isinstance(target, int) and choices:
        target = choices[target]
    return f"{text}{task.config.target_delimiter}{target}"


def _texts(task: Any, docs: Any, count: int) -> list[str]:
    import itertools

    return [render(task, doc) for doc in itertools.islice(docs, count)]


def _calibration(task: Any) -> tuple[str, Any]:
    """The split calibration and training read: training, else validation, else the evaluated one."""
    if task.has_training_docs():
        return task.config.training_split, task.training_docs()
    if task.has_validation_docs() and task.has_test_docs():
        return task.config.validation_split, task.validation_docs()
    return f"{task.config.test_split or task.config.validation_split} (the evaluated split)", task.eval_docs


def metric_names(name: str, task: Any) -> list[str]:
    """The names ``results`` gives a task's metrics, in lm-eval's order (filters, then metrics)."""
    filters = [ensemble.name for ensemble in task._filters]
    return [f"{name}/{metric}" + ("" if kept == "none" else f",{kept}") for kept in filters for metric in task.aggregation()]


def _fingerprint(tasks: Mapping[str, Any]) -> str:
    """A hash of the tasks' configs (prompts, metrics, files), so an edited YAML gets new run ids."""
    import hashlib
    import json

    def named(value: Any) -> str:
        return getattr(value, "__qualname__", type(value).__name__)

    configs = [task.dump_config() for task in tasks.values()]
    return hashlib.sha256(json.dumps(configs, sort_keys=True, default=named).encode()).hexdigest()[:16]


def load(request: TaskRequest) -> TaskData:
    options = LmEvalOptions.of(request.options)
    try:
        import lm_eval
    except ImportError:
        raise UsageError(EXTRA) from None
    specs = _specs(options.tasks)
    include = str(Path(options.include_path).expanduser().resolve()) if options.include_path else None
    limit = options.limit or None
    with contained():
        tm, defaults = _choose_manager(specs, include)
        tasks = _load(tm, specs)["tasks"]
        calibration = {name: _calibration(task) for name, task in tasks.items()}
        train = [text for name, task in tasks.items() for text in _texts(task, calibration[name][1], DOCS)]
        evaluated = [text for task in tasks.values() for text in _texts(task, task.eval_docs, min(limit or DOCS, DOCS))]
    metrics = tuple(metric for name, task in tasks.items() for metric in metric_names(name, task))
    if not metrics or not train or not evaluated:
        raise UsageError(f"lm-eval tasks {', '.join(specs)}: no documents or no metrics")
    suite = Suite(specs, include, defaults, limit, options.num_fewshot, metrics)
    protocol = {"source": f"lm-eval {lm_eval.__version__}", "lm_eval_tasks": ",".join(tasks), "limit": limit or "all",
                "num_fewshot": options.num_fewshot, "fewshot_seed": FEWSHOT_SEED, "config": _fingerprint(tasks),
                "calibration": "; ".join(f"{name}: {split}" for name, (split, _) in calibration.items()),
                "calibration_docs": f"the first {DOCS} documents of each, prompt + gold answer",
                "window_tokens": options.max_length}
    return TaskData(Split(tuple(train), ()), Split(tuple(evaluated), ()), (), metrics[0], options.max_length,
                    options.train_steps, "causal-lm", protocol, functools.partial(evaluate, suite))


@hookimpl
def harness_tasks() -> list[Task]:
    description = "lm-evaluation-harness tasks (-o lm-eval.tasks=...) on the in-memory model: a row per task and metric"
    return [Task("lm-eval", load, description, LmEvalOptions())]
