"""One unit of a grid: fine-tune once (or load it from the cache), score once per scorer, prune per sparsity.

What a cell computes lives here (keys, fine-tune, scoring, pruning through the
granularity, measuring; the scoring passes and their cache are
:mod:`harness.scoring`); the order of the cells and what a failure costs is
:mod:`harness.cells`; where units run, and resuming, is :mod:`harness.executor`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness import adaptation, batching, chance, devices, measures, modeling, schedules, scoring, surgery
from harness import data as taskdata
from harness.cache import Cache, default_root, digest, fingerprint_folder
from harness.cells import DENSE, Cell, UnitSpec
from harness.checks import zero_scores
from harness.config import Budget
from harness.models import ModelSource, load_for_task
from harness.planning import Plan
from harness.plugins import options_for, options_label
from harness.records import (
    Adapter,
    EvalRequest,
    Granularity,
    Pruner,
    PruneRequest,
    Scorer,
    Task,
    TaskData,
    TrainRequest,
)
from harness.schedules import ONE_SHOT, Gated
from harness.scoring import Scored
from harness.tensorboard import Scalars, recording

Row = dict[str, Any]
DEFAULT_TRAIN_STEPS = 300
# Cache meta key of the fine-tune's tail-mean loss; entries written before it (last-step loss) have none.
LOSS_KEY = "tail_loss"


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:300]


@dataclass
class Unit:
    """One (model, task, adapter, seed): the fine-tuned dense model and what every cell shares."""

    plan: Plan
    source: ModelSource
    task: Task
    data: TaskData
    adapter: Adapter
    seed: int
    write: Callable[[Row], None]
    scalars: Scalars
    cache: Cache
    identity: dict  # fingerprints of the model files and the task data: part of every hash
    model: Any = None
    tokenizer: Any = None
    feed: Any = None  # how the task's data reaches the model (classification examples or LM blocks)
    eval_batches: list = field(default_factory=list)
    calibration: list = field(default_factory=list)
    latency_input: dict = field(default_factory=dict)
    decode_inputs: dict = field(default_factory=dict)  # batch size -> decode prompt ids (causal LMs)
    train_s: float = float("nan")
    heads_total: int = 0
    dense_gflops: float = float("nan")
    adapted: dict = field(default_factory=dict)  # the unit adapter's row columns: trainable params, config, ranks
    flags: tuple[str, ...] = ()  # what makes every row of the unit suspect (its training did not learn)
    scopes: dict = field(default_factory=dict)  # granularity -> (module names, dense weight count)
    target_names: tuple[str, ...] | None = None  # the --targets modules, found once
    chance: float | None = None  # the task's trivial reference score (harness.chance), None where unknown
    dense_served: Any = None  # the dense model as evaluation and latency see it (cast to --dtype; itself for float32)
    timings: measures.SharedTimings = field(default_factory=measures.SharedTimings)  # per kernel signature

    @property
    def placement(self) -> devices.Placement:
        budget = self.plan.config.budget
        return devices.Placement(budget.device, budget.dtype)

    @property
    def train_steps(self) -> int:
        steps = self.plan.config.budget.train_steps
        if steps is not None:
            return steps
        return self.data.train_steps if self.data.train_steps is not None else DEFAULT_TRAIN_STEPS

    @property
    def budget(self) -> Budget:
        """The budget with the task's default training steps filled in: what the keys hash."""
        return dataclasses.replace(self.plan.config.budget, train_steps=self.train_steps)

    def targets(self, granularity: Granularity | None) -> tuple[str, ...]:
        """The ``--targets`` modules, for a granularity that prunes within them (else none)."""
        if granularity is None or not granularity.uses_targets:
            return ()
        if self.target_names is None:
            self.target_names = surgery.target_modules(self.model, self.plan.config.grid.targets)
        return self.target_names

    def row(self, cell: Cell) -> Row:
        """The identifying columns of a cell, with its run id: a hash of them, the budget, measurement and code."""
        plan, o = self.plan, self.plan.overrides
        recover = plan.recovery if cell.recovery else None
        labels = [options_label(r, o) for r in (self.task, self.adapter, cell.scorer, cell.pruner) if r is not None]
        granularity = plan.granularity(cell.pruner)
        parts = {
            "model": self.source.name,
            "task": self.task.name,
            "adapter": self.adapter.name,
            "scorer": cell.scorer.name if cell.scorer else "none",
            "pruner": cell.pruner.name if cell.pruner else "none",
            "granularity": granularity.name if granularity else "none",
            "options": ";".join(label for label in labels if label),
            "targets": plan.config.grid.targets if granularity and granularity.uses_targets else "",
            "sparsity": cell.sparsity,
            "seed": self.seed,
            "recovery": (options_label(recover, o) or recover.name) if recover else "",
            **({"schedule": cell.schedule} if cell.schedule != ONE_SHOT else {}),  # one-shot run ids as before
        }
        budget = self.budget.stages("train", "score", "cell", *(("recovery",) if recover else ()))
        code = {"unit": self.unit_code(), "scorer": plan.code_of(cell.scorer), "pruner": plan.code_of(cell.pruner),
                "granularity": plan.code_of(granularity), "recovery": plan.code_of(recover)}
        key = digest({**parts, "identity": self.identity, "budget": budget,
                      "measure": dataclasses.asdict(plan.config.measure), "code": code})
        return {"run_id": key, **parts, "schedule": cell.schedule if cell.pruner else "", "metric": self.data.metric,
                "device": self.budget.device, "dtype": self.budget.dtype, "train_s": round(self.train_s, 2),
                **self.adapted}

    def unit_key(self) -> str:
        """Hash of what determines the fine-tuned model: the cache key of the unit's training."""
        adapter = options_label(self.adapter, self.plan.overrides) or self.adapter.name
        return digest({"identity": self.identity, "model": self.source.name, "task": self.task.name,
                       "adapter": adapter, "seed": self.seed, "budget": self.budget.stages("train"),
                       "code": self.unit_code()})

    def unit_code(self) -> dict[str, str]:
        """The code identities of the task and adapter plugins: what the fine-tune depends on besides data."""
        return {"task": self.plan.code_of(self.task), "adapter": self.plan.code_of(self.adapter)}

    def scope(self, granularity: Granularity) -> tuple[tuple[str, ...], int] | None:
        """The weights a granularity prunes (names, dense count): what achieved sparsity is measured on."""
        if granularity.name not in self.scopes:
            try:
                names = granularity.scope(self.model, self.targets(granularity))
                self.scopes[granularity.name] = (names, surgery.count_nonzero(self.model, names)[1])
            except ValueError:  # an architecture without a layout for this granularity
                self.scopes[granularity.name] = None
        return self.scopes[granularity.name]

    def sparsity_of(self, model: Any, granularity: Granularity | None) -> float:
        """1 - nonzero weights left in the pruned scope / weights the dense model had there (counted)."""
        if granularity is None:
            return 0.0
        if granularity.achieved is not None:  # dynamic units: measured on the evaluation data
            return float(granularity.achieved(model, self.eval_batches))
        scope = self.scope(granularity)
        if scope is None:
            return float("nan")
        names, dense = scope
        return 1.0 - surgery.count_nonzero(model, names)[0] / dense

    def measure(self, model: Any, row: Row, granularity: Granularity | None = None) -> list[Row]:
        """Quality on the validation split, size, sparsity, FLOPs, latency and speedup over the dense model.

        One row per metric (see :func:`metric_rows`); a pruned model is timed in
        alternation with the dense one, in the same run, once for all of them, unless
        a model of the unit with the same kernels was timed (``latency_from``).
        """
        dense = model is self.model
        served = self.dense_served if dense else self.placement.served(model, copy=False)
        scores, quality_flags = self._evaluated(served)
        if chance.at_chance(self.data.metric, scores[self.data.metric], self.chance):
            quality_flags = (*quality_flags, chance.FLAG)
        flags = sorted({*self.flags, *row.pop("flags", ()), *quality_flags})
        geometry = surgery.head_geometry(model)
        timed = self._timed(served, row) if not dense else served
        speed, timed_for = self.timings.columns(row["run_id"], self.dense_served, timed, self.latency_input,
                                                self.decode_inputs, self.plan.config.measure.decode_tokens)
        if timed_for is not None:
            row.setdefault("extras", {})["latency_from"] = timed_for
        log = self.scalars.logger(f"cell-{row['run_id']}")
        for name, value in scores.items():
            log(f"eval/{name}", value, 0)
        log("eval/heads_kept", geometry.total_heads, 0)
        log("eval/latency_ms", float(speed["latency_ms"]), 0)
        gflops = self.dense_gflops if dense else measures.forward_flops(model, self.latency_input) / 1e9
        achieved = self.sparsity_of(model, granularity)
        log("eval/achieved_sparsity", achieved, 0)
        evaluated = {} if self.data.evaluate else {"eval_examples": sum(len(b["input_ids"]) for b in self.eval_batches)}
        extras = {**self.data.protocol, **evaluated, "device_name": devices.describe(self.budget.device),
                  **row.pop("extras", {})}
        return metric_rows({
            **row,
            "extras": json.dumps({k: _rounded(v) for k, v in sorted(extras.items())}) if extras else "",
            "achieved_sparsity": round(achieved, 6),
            "heads_kept": geometry.total_heads,
            "heads_total": self.heads_total,
            "params": modeling.count_params(model),
            "nonzero_params": sum(int(p.count_nonzero()) for p in model.parameters()),
            "gflops": round(gflops, 4),
            **speed,
            "chance": "" if self.chance is None else round(self.chance, 6),
            "flags": ";".join(flags),
            "status": "ok",
            "error": "",
        }, scores)

    def _timed(self, served: Any, row: Row) -> Any:
        """The model the timed passes run: with ``--sparse-kernels``, a copy whose 2:4 weights are on torch's
        semi-structured kernels (the row's ``latency_kernel`` says how many layers), else ``served`` itself."""
        if not self.plan.config.measure.sparse_kernels:
            return served
        converted = surgery.semi_structured(served)
        extras = row.setdefault("extras", {})
        if converted.converted:
            extras["latency_kernel"] = (f"semi-structured 2:4: {len(converted.converted)} of {converted.linear} "
                                        "linear layers on torch's sparse kernels")
        if converted.refused:  # said, not hidden: the row would otherwise pass for a sparse-kernel timing
            extras["sparse_kernels_refused"] = f"{len(converted.refused)} 2:4 layers dense ({converted.error})"
        return converted.model

    def quality(self, model: Any) -> tuple[dict[str, float], tuple[str, ...]]:
        """The model's metrics in order, the task's metric first, and the flags they raise.

        A task with ``evaluate`` scores the model itself (an external suite);
        the others get the feed's one metric on the evaluation batches.
        """
        if self.data.evaluate is None:
            quality = self.feed.quality(model, self.eval_batches)
            return {self.data.metric: quality.score}, quality.flags
        budget = self.budget
        request = EvalRequest(model, self.tokenizer, budget.batch_size, budget.eval_limit, self.seed)
        scores = {str(name): float(value) for name, value in self.data.evaluate(request).items()}
        if next(iter(scores), None) != self.data.metric:
            raise ValueError(f"task {self.task.name} returned {next(iter(scores), 'no metric')!r} first, "
                             f"not its metric {self.data.metric!r}")
        return scores, ()

    def prepare(self) -> None:
        """Load and fine-tune (or load the cached fine-tune of) the dense model: the reference of every cell."""
        budget, measure = self.budget, self.plan.config.measure
        placement = self.placement
        self.model, self.tokenizer = load_for_task(self.source, self.data, self.seed)
        self.model.to(placement.device)
        self.feed = batching.feed_for(self.data, self.tokenizer)
        evaluation = self.feed.evaluation(budget.eval_limit)
        vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
        self.chance = chance.reference(self.data, self.feed, evaluation, vocab)
        self.eval_batches = placement.batches(evaluation)
        self.calibration = placement.batches(self.feed.calibration(budget.calib_examples, budget.batch_size, self.seed))
        meta = self.cache.load_model(self.unit_key(), self.model, before=adaptation.restore_architecture)
        if meta is None:
            meta, updates = self._train()
            if updates:
                meta["ranks"] = adaptation.write_spectra(updates, self.model, self.spectra_stem())
            self.cache.save_model(self.unit_key(), self.model, meta)
        self.train_s = float(meta["train_s"])
        self.adapted = adaptation.row_columns(meta)
        self.flags = adaptation.training_flags(meta.get(LOSS_KEY), self.data)
        self.model.to(placement.device).eval()  # modules a cached adapter's architecture added start on the CPU
        self.dense_served = placement.served(self.model, copy=True)
        self.heads_total = surgery.head_geometry(self.model).total_heads
        self.latency_input = measures.latency_input(self.model, measure.latency_batch, measure.latency_tokens)
        self.dense_gflops = measures.forward_flops(self.model, self.latency_input) / 1e9
        if self.data.kind == "causal-lm" and measure.decode_tokens:
            self.decode_inputs = {batch: measures.decode_prompt(self.model, batch, measure.latency_tokens,
                                                                measure.decode_tokens)
                                  for batch in measures.DECODE_BATCHES}

    def spectra_stem(self) -> Any:
        """Where this unit's update spectra go: ``<out>/spectra/<model>-<task>-<adapter>-seed<N>``, slugs only."""
        from harness.atomic import confined

        model = self.source.name.rstrip("/").split("/")[-1]
        return confined(self.plan.config.execution.out, "spectra",
                        f"{model}-{self.task.name}-{self.adapter.name}-seed{self.seed}")

    def _evaluated(self, model: Any) -> tuple[dict[str, float], tuple[str, ...]]:
        """:meth:`quality` as the phase ``evaluation``, a step per forward pass (one per batch)."""
        from harness import progress

        total = len(self.eval_batches) if self.data.evaluate is None else None  # an external suite: unknown
        with progress.phase("evaluation", total=total) as step, progress.forwards(model, step):
            return self.quality(model)

    def _train(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from harness import progress

        budget = self.budget
        options = options_for(self.adapter, self.plan.overrides)
        log = self.scalars.logger(f"{self.adapter.name}-{self.row(DENSE)['run_id']}")
        with progress.phase(f"fine-tune ({self.adapter.name})", total=self.train_steps) as step:
            stream = progress.ticking(self.train_batches(self.train_steps), step)  # a step per batch the loop takes
            request = TrainRequest(self.model, stream, self.train_steps, budget.learning_rate, self.seed, options, log)
            start = time.perf_counter()
            with self.placement.autocast():
                result = self.adapter.train(request)
            elapsed = time.perf_counter() - start
        self.model = result.model.eval()
        self.cache.counts["fine_tunes_run"] += 1
        meta = {"train_s": elapsed, "trainable_params": result.trainable_params, LOSS_KEY: adaptation.trained_loss(result),
                "config": dict(result.config), **adaptation.architecture(self.model)}
        return meta, dict(result.updates)

    def dense(self) -> list[Row]:
        return self.measure(self.model, {**self.row(DENSE), "scoring_s": 0.0, "prune_s": 0.0, "updates_weights": False})

    def train_batches(self, steps: int, seed_offset: int = 0) -> Any:
        return self.placement.stream(self.feed.stream(steps, self.budget.batch_size, self.seed + seed_offset))

    def scores(self, scorer: Scorer | None, pruner: Pruner, sparsity: float | None, gated: Gated | None = None) -> Scored:
        """A scorer's output on a copy of the dense model (once, or once per sparsity if it learns), cached.

        Without a scorer (a pruner that uses no scores) the "scores" are zeros of
        the granularity's shapes: only their shapes matter. ``gated``: units an
        earlier step of an iterative schedule removed, gated off while scoring.
        """
        granularity = self.plan.granularity(scorer or pruner)
        expected = granularity.shapes(self.model, self.targets(granularity))
        if scorer is None:
            return Scored(zero_scores(expected), 0.0, {})
        key = scoring.score_key(self, scorer, sparsity, granularity, gated)
        found = scoring.cached(self, scorer, key)
        if found is not None:
            return found
        scored = scoring.compute(self, scorer, sparsity, granularity, expected, gated)
        self.cache.counts["scoring_runs"] += 1
        scoring.store(self, key, scored)
        return scored

    def pruned(self, cell: Cell, scored: Scored) -> list[Row]:
        """Apply the pruner's mask to a copy; with recovery, train it again (sparsity kept) before measuring."""
        pruner, scores = cell.pruner, scored.values
        assert pruner is not None
        granularity = self.plan.granularity(pruner)
        base = scored.model if scored.model is not None else self.model
        kv_heads = surgery.kv_heads(base)
        extras = {**scored.extras, "calib_examples": sum(len(batch["input_ids"]) for batch in self.calibration)}
        row = {**self.row(cell), "scoring_s": round(scored.seconds, 3)}
        log = recording(self.scalars.logger(f"{pruner.name}-{row['run_id']}"), extras)
        model = copy.deepcopy(base) if pruner.updates_model else base  # its own copy to reconstruct in
        request = PruneRequest(scores, cell.sparsity, options_for(pruner, self.plan.overrides), self.seed, kv_heads,
                               model, log, self.calibration)
        with self.placement.autocast():
            keep, scoring_s, mask_s = schedules.keep_mask(self, cell, scored, request)
            start = time.perf_counter()
            model = granularity.apply(model if pruner.updates_model else copy.deepcopy(base), keep)
        row["prune_s"] = round(mask_s + time.perf_counter() - start, 3)
        row["scoring_s"] = round(scoring_s, 3)
        row["updates_weights"] = bool((cell.scorer is not None and cell.scorer.updates_model) or
                                      (pruner.updates_model and measures.weights_changed(base, model)))
        if cell.recovery:
            model, recovered, row["flags"] = self._recover(model, granularity.held(model, keep))
            extras.update(recovered)
            row["trainable_params"] = int(recovered["recovery/trainable_params"])
        if modeling.count_params(model) == modeling.count_params(self.model):  # zeros kept in place (weights, N:M)
            extras["latency_kernel"] = "dense: zeros are multiplied, so the speed is the dense kernel's"
        row["extras"] = extras
        return self.measure(model, row, granularity)

    def _recover(self, model: Any, held: Any) -> tuple[Any, dict[str, float], tuple[str, ...]]:
        adapter = self.plan.recovery
        assert adapter is not None
        steps = self.budget.recover_steps
        request = TrainRequest(model, self.train_batches(steps, seed_offset=1), steps, self.budget.learning_rate,
                               self.seed, options_for(adapter, self.plan.overrides))
        with self.placement.autocast():
            return adaptation.recover(adapter, request, held, self.data)

    def error_row(self, cell: Cell, error: BaseException) -> Row:
        return {**self.row(cell), "status": "error", "error": _error_text(error)}


def cache_of(plan: Plan) -> Cache:
    e = plan.config.execution
    return Cache(None if not e.use_cache else Path(e.cache) if e.cache else default_root())


def make_unit(plan: Plan, spec: UnitSpec, write: Callable[[Row], None], scalars: Scalars, cache: Cache) -> Unit:
    source = plan.models[spec.model]
    task, data = plan.tasks[spec.task]
    identity = {"model": fingerprint_folder(source.location), "data": taskdata.fingerprint(data)}
    return Unit(plan, source, task, data, plan.adapters[spec.adapter], spec.seed, write, scalars, cache, identity)


def metric_rows(row: Row, scores: dict[str, float]) -> list[Row]:
    """One row per metric, alike but for ``metric`` and ``score``: the first keeps the cell's run id (it marks the
    cell done), each other gets an id derived from it and its metric, so every row of a cell is a row of its own."""
    return [{**row, "run_id": row["run_id"] if index == 0 else digest({"cell": row["run_id"], "metric": name}),
             "metric": name, "score": round(value, 6)} for index, (name, value) in enumerate(scores.items())]


def _rounded(value: Any) -> Any:
    """Extras as the row stores them: numbers to 6 decimals, anything else (a task's protocol) as it is."""
    return round(value, 6) if isinstance(value, float) else value
