"""One unit of a grid: fine-tune once (or load it from the cache), score once per scorer, prune per sparsity.

Failures are isolated: an exception in a plugin becomes ``status=error`` rows for
exactly the cells that depended on it, and the grid goes on. Which units run
where, and resuming, is :mod:`harness.executor`'s job.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from harness import adaptation, feeds, modeling, surgery
from harness.bench import Plan
from harness.cache import Cache, digest, untied
from harness.models import ModelSource, load_for_task
from harness.plugins import options_for, options_label
from harness.records import Adapter, Pruner, PruneRequest, Scorer, ScoreRequest, Task, TaskData, TrainRequest
from harness.tracking import Scalars, recording

Row = dict[str, Any]
DEFAULT_TRAIN_STEPS = 300
# Cache meta key of the fine-tune's tail-mean loss; entries written before it (last-step loss) have none.
LOSS_KEY = "tail_loss"


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:300]


@dataclass(frozen=True)
class Scored:
    """A scorer's output, its wall time and the last value of every scalar it logged."""

    values: Any
    seconds: float
    extras: dict[str, float]
    model: Any = None  # the scorer's trained copy, when it updates the model


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
    train_s: float = float("nan")
    heads_total: int = 0
    dense_gflops: float = float("nan")
    adapted: dict = field(default_factory=dict)  # the unit adapter's row columns: trainable params, config, ranks
    flags: tuple[str, ...] = ()  # what makes every row of the unit suspect (its training did not learn)
    scopes: dict = field(default_factory=dict)  # granularity -> (module names, dense weight count)

    @property
    def train_steps(self) -> int:
        steps = self.plan.config.train_steps
        return steps if steps is not None else (self.data.train_steps or DEFAULT_TRAIN_STEPS)

    def row(self, scorer: Scorer | None, pruner: Pruner | None, sparsity: float, recovery: bool = False) -> Row:
        """The identifying columns of a cell, with its content-hash run id."""
        c, o = self.plan.config, self.plan.overrides
        recover = self.plan.recovery if recovery else None
        labels = [options_label(r, o) for r in (self.task, self.adapter, scorer, pruner) if r is not None]
        granularity = pruner.granularity if pruner else "none"
        parts = {
            "model": self.source.name,
            "task": self.task.name,
            "adapter": self.adapter.name,
            "scorer": scorer.name if scorer else "none",
            "pruner": pruner.name if pruner else "none",
            "granularity": granularity,
            "options": ";".join(label for label in labels if label),
            "targets": c.targets if granularity == "weight" else "",
            "sparsity": sparsity,
            "seed": self.seed,
            "recovery": (options_label(recover, o) or recover.name) if recover else "",
        }
        budget = (self.train_steps, c.batch_size, c.learning_rate, c.calib_examples, c.eval_limit)
        if recover:
            budget = (*budget, c.recover_steps)
        latency = (c.latency_batch, c.latency_tokens)
        code_of = self.plan.code_of
        code = {"unit": self.unit_code(), "scorer": code_of(scorer), "pruner": code_of(pruner), "recovery": code_of(recover)}
        key = digest({**parts, "identity": self.identity, "budget": budget, "latency": latency, "code": code})
        return {"run_id": key, **parts, "metric": self.data.metric, "train_s": round(self.train_s, 2), **self.adapted}

    def unit_key(self) -> str:
        """Hash of what determines the fine-tuned model: the cache key of the unit's training."""
        c = self.plan.config
        adapter = options_label(self.adapter, self.plan.overrides) or self.adapter.name
        budget = (self.train_steps, c.batch_size, c.learning_rate)
        return digest({"identity": self.identity, "model": self.source.name, "task": self.task.name,
                       "adapter": adapter, "seed": self.seed, "budget": budget, "code": self.unit_code()})

    def unit_code(self) -> dict[str, str]:
        """The code identities of the task and adapter plugins: what the fine-tune depends on besides data."""
        return {"task": self.plan.code_of(self.task), "adapter": self.plan.code_of(self.adapter)}

    def scope(self, granularity: str) -> tuple[tuple[str, ...], int] | None:
        """The weights a granularity prunes (names, dense count): what achieved sparsity is measured on."""
        if granularity not in self.scopes:
            groups = {"head": ("q", "k", "v", "o"), "neuron": ("ffn_in", "ffn_out")}
            try:
                spec = groups.get(granularity) or surgery.parse_groups(self.plan.config.targets)
                names = surgery.target_modules(self.model, spec)
                self.scopes[granularity] = (names, surgery.count_nonzero(self.model, names)[1])
            except ValueError:  # an architecture without a layout for this granularity
                self.scopes[granularity] = None
        return self.scopes[granularity]

    def sparsity_of(self, model: Any, granularity: str) -> float:
        """1 - nonzero weights left in the pruned scope / weights the dense model had there (counted)."""
        scope = self.scope(granularity) if granularity != "none" else None
        if scope is None:
            return 0.0 if granularity == "none" else float("nan")
        names, dense = scope
        return 1.0 - surgery.count_nonzero(model, names)[0] / dense

    def measure(self, model: Any, row: Row) -> Row:
        """Quality on the validation split, size, sparsity, FLOPs, latency and speedup over the dense model.

        A pruned model is timed in alternation with the dense one, in the same run.
        """
        quality = self.feed.quality(model, self.eval_batches)
        score = quality.score
        flags = sorted({*self.flags, *row.pop("flags", ()), *quality.flags})
        geometry = surgery.head_geometry(model)
        if model is self.model:
            latency = reference = modeling.measure_latency_ms(model, self.latency_input)
        else:
            reference, latency = modeling.compare_latency_ms([self.model, model], self.latency_input)
        log = self.scalars.logger(f"cell-{row['run_id']}")
        log(f"eval/{self.data.metric}", score, 0)
        log("eval/heads_kept", geometry.total_heads, 0)
        log("eval/latency_ms", latency, 0)
        gflops = modeling.forward_flops(model, self.latency_input) / 1e9 if model is not self.model else self.dense_gflops
        achieved = self.sparsity_of(model, row["granularity"])
        log("eval/achieved_sparsity", achieved, 0)
        return {
            **row,
            "achieved_sparsity": round(achieved, 6),
            "heads_kept": geometry.total_heads,
            "heads_total": self.heads_total,
            "score": round(score, 6),
            "params": modeling.count_params(model),
            "nonzero_params": sum(int(p.count_nonzero()) for p in model.parameters()),
            "gflops": round(gflops, 4),
            "latency_ms": round(latency, 3),
            "speedup": round(reference / latency, 4),
            "flags": ";".join(flags),
            "status": "ok",
            "error": "",
        }

    def prepare(self) -> None:
        """Load and fine-tune (or load the cached fine-tune of) the dense model: the reference of every cell."""
        c = self.plan.config
        self.model, self.tokenizer = load_for_task(self.source, self.data, self.seed)
        self.feed = feeds.feed_for(self.data, self.tokenizer)
        self.eval_batches = self.feed.evaluation(c.eval_limit)
        self.calibration = self.feed.calibration(c.calib_examples, c.batch_size, self.seed)
        meta = self.cache.load_model(self.unit_key(), self.model)
        if meta is None:
            meta, updates = self._train()
            if updates:
                meta["ranks"] = adaptation.write_spectra(updates, self.model, self.spectra_stem())
            self.cache.save_model(self.unit_key(), self.model, meta)
        self.train_s = float(meta["train_s"])
        self.adapted = adaptation.row_columns(meta)
        self.flags = adaptation.training_flags(meta.get(LOSS_KEY), self.data)
        self.model.eval()
        self.heads_total = surgery.head_geometry(self.model).total_heads
        self.latency_input = modeling.latency_input(self.model, c.latency_batch, c.latency_tokens)
        self.dense_gflops = modeling.forward_flops(self.model, self.latency_input) / 1e9

    def spectra_stem(self) -> Any:
        """Where this unit's update spectra go: ``<out>/spectra/<model>-<task>-<adapter>-seed<N>``, slugs only."""
        from harness.atomic import confined

        model = self.source.name.rstrip("/").split("/")[-1]
        return confined(self.plan.config.out, "spectra", f"{model}-{self.task.name}-{self.adapter.name}-seed{self.seed}")

    def _train(self) -> tuple[dict[str, Any], dict[str, Any]]:
        c = self.plan.config
        stream = self.feed.stream(self.train_steps, c.batch_size, self.seed)
        options = options_for(self.adapter, self.plan.overrides)
        log = self.scalars.logger(f"{self.adapter.name}-{self.row(None, None, 0.0)['run_id']}")
        request = TrainRequest(self.model, stream, self.train_steps, c.learning_rate, self.seed, options, log)
        start = time.perf_counter()
        result = self.adapter.train(request)
        elapsed = time.perf_counter() - start
        self.model = result.model.eval()
        self.cache.counts["fine_tunes_run"] += 1
        meta = {"train_s": elapsed, "trainable_params": result.trainable_params, LOSS_KEY: adaptation.trained_loss(result),
                "config": dict(result.config)}
        return meta, dict(result.updates)

    def dense(self) -> Row:
        return self.measure(self.model, {**self.row(None, None, 0.0), "scoring_s": 0.0})

    def train_batches(self, steps: int) -> Any:
        c = self.plan.config
        return self.feed.stream(steps, c.batch_size, self.seed)

    def scores(self, scorer: Scorer | None, sparsity: float | None) -> Scored:
        """A scorer's output on a copy of the dense model (once, or once per sparsity if it learns), cached.

        Without a scorer (a pruner that uses no scores) the "scores" are the
        absolute target weights: only their shapes matter.
        """
        targets = self.scope("weight")[0] if self.scope("weight") else ()
        if scorer is None:
            modules = dict(self.model.named_modules())
            return Scored({n: modules[n].weight.detach().abs() for n in targets}, 0.0, {})
        key = self._score_key(scorer, sparsity, targets)
        cached = self._cached_scores(scorer, key)
        if cached is not None:
            return cached
        scored = self._score(scorer, sparsity, targets)
        self.cache.counts["scoring_runs"] += 1
        tensors = scored.values if isinstance(scored.values, dict) else {"": scored.values}
        tensors = {f"scores/{name}": t for name, t in tensors.items()}
        if scored.model is not None:
            tensors.update({f"model/{k}": v for k, v in scored.model.state_dict().items()})
        meta = {"seconds": scored.seconds, "extras": scored.extras, "dict": isinstance(scored.values, dict)}
        self.cache.save_tensors("scores", key, untied(tensors), meta)
        return scored

    def _score_key(self, scorer: Scorer, sparsity: float | None, targets: tuple[str, ...]) -> str:
        c = self.plan.config
        label = options_label(scorer, self.plan.overrides) or scorer.name
        targets = targets if scorer.granularity == "weight" else ()
        calibration = (c.calib_examples, c.batch_size)
        return digest({"unit": self.unit_key(), "scorer": label, "sparsity": sparsity, "targets": targets,
                       "calibration": calibration, "code": self.plan.code_of(scorer)})

    def _cached_scores(self, scorer: Scorer, key: str) -> Scored | None:
        found = self.cache.load_tensors("scores", key)
        if found is None:
            return None
        tensors, meta = found
        scores = {k[len("scores/"):]: v for k, v in tensors.items() if k.startswith("scores/")}
        model = None
        if scorer.updates_model:
            model = copy.deepcopy(self.model)
            state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
            model.load_state_dict(state, strict=False)
            model.eval()
        values = scores if meta["dict"] else scores[""]
        return Scored(values, float(meta["seconds"]), dict(meta["extras"]), model)

    def _score(self, scorer: Scorer, sparsity: float | None, targets: tuple[str, ...]) -> Scored:
        model = copy.deepcopy(self.model)
        label = self.row(scorer, None, sparsity or 0.0)["run_id"]
        extras: dict[str, float] = {}
        log = recording(self.scalars.logger(f"{scorer.name}-{label}"), extras)
        options = options_for(scorer, self.plan.overrides)
        targets = targets if scorer.granularity == "weight" else ()
        request = ScoreRequest(model, self.calibration, self.seed, options, sparsity, self.train_batches, log, targets)
        start = time.perf_counter()
        values = scorer.score(request)
        elapsed = time.perf_counter() - start
        values = _checked_scores(scorer, values, self._expected_shapes(scorer.granularity))
        return Scored(values, elapsed, extras, model if scorer.updates_model else None)

    def _expected_shapes(self, granularity: str) -> Any:
        if granularity == "head":
            geometry = surgery.head_geometry(self.model)
            return (geometry.num_layers, max(geometry.heads_per_layer))
        if granularity == "neuron":
            widths = surgery.ffn_widths(self.model)
            return (len(widths), max(widths))
        modules = dict(self.model.named_modules())
        return {name: tuple(modules[name].weight.shape) for name in self.scope("weight")[0]}

    def pruned(self, scorer: Scorer | None, pruner: Pruner, scored: Scored, sparsity: float, recovery: bool) -> Row:
        """Apply the pruner's mask to a copy; with ``recovery``, train it again (sparsity kept) before measuring."""
        scores = scored.values
        kv_heads = surgery.head_geometry(self.model).kv_heads_per_layer
        request = PruneRequest(scores, sparsity, options_for(pruner, self.plan.overrides), self.seed, kv_heads)
        keep = pruner.compute_mask(request)
        base = scored.model if scored.model is not None else self.model
        model = apply_keep(copy.deepcopy(base), pruner, keep, scores)
        extras = dict(scored.extras)
        row = {**self.row(scorer, pruner, sparsity, recovery), "scoring_s": round(scored.seconds, 3)}
        if recovery:
            model, recovered, row["flags"] = adaptation.recover(self, model, pruner, keep)
            extras.update(recovered)
            row["trainable_params"] = int(recovered["recovery/trainable_params"])
        row["extras"] = json.dumps({k: round(v, 6) for k, v in sorted(extras.items())}) if extras else ""
        return self.measure(model, row)

    def error_row(self, cell: tuple, error: BaseException) -> Row:
        return {**self.row(*cell), "status": "error", "error": _error_text(error)}


def _checked_scores(scorer: Scorer, values: Any, expected: Any) -> Any:
    """Scores as float CPU tensors, after checking shapes against the model and that they can be ranked.

    NaN ranks nowhere; weight scores must also be finite (global and LAMP
    rankings compare them across modules). Head and neuron scores may use ±inf
    to pin a unit.
    """
    if isinstance(expected, dict):
        if not isinstance(values, dict) or set(values) != set(expected):
            raise ValueError(f"scorer {scorer.name!r} must return a tensor for each of the {len(expected)} target modules")
        for name, shape in expected.items():
            if tuple(values[name].shape) != shape:
                raise ValueError(f"scorer {scorer.name!r}: {name} scores have shape {tuple(values[name].shape)}")
            if not bool(values[name].isfinite().all()):
                raise ValueError(f"scorer {scorer.name!r}: {name} scores are not all finite")
        return {name: values[name].detach().float().cpu() for name in expected}
    if tuple(getattr(values, "shape", ())) != expected:
        shape = tuple(getattr(values, "shape", ()))
        raise ValueError(f"scorer {scorer.name!r} returned shape {shape}, expected {expected}")
    if bool(values.isnan().any()):
        raise ValueError(f"scorer {scorer.name!r} returned NaN scores")
    return values.detach().float().cpu()


def apply_keep(model: Any, pruner: Pruner, keep: Any, scores: Any) -> Any:
    """Apply a pruner's keep-mask: heads and neurons are removed, weights zeroed permanently."""
    if pruner.granularity == "weight":
        if not isinstance(keep, dict) or set(keep) != set(scores):
            raise ValueError(f"pruner {pruner.name!r} must return a mask for each scored module")
        for name, mask in keep.items():
            if tuple(mask.shape) != tuple(scores[name].shape):
                raise ValueError(f"pruner {pruner.name!r} returned a mask of shape {tuple(mask.shape)} for {name}")
        return surgery.apply_weight_masks(model, {name: mask.bool() for name, mask in keep.items()})
    if tuple(getattr(keep, "shape", ())) != tuple(scores.shape):
        raise ValueError(f"pruner {pruner.name!r} returned a mask of shape {tuple(getattr(keep, 'shape', ()))}")
    if pruner.granularity == "neuron":
        return surgery.remove_neurons(model, keep.bool())
    return surgery.remove_heads(model, keep.bool())
