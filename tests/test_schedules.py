"""Iterative pruning schedules: parsing, planning, equality with one shot at one step, and re-scoring on the
model as the earlier steps pruned it (gating == removal, checked against scoring the physically pruned model)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import tiny_config, tiny_tokenizer

import harness
from harness import Pruner, PruneRequest, Scorer, ScoreRequest, hookimpl, schedules
from harness.errors import UsageError

FAST = dict(train_steps=0, calib_examples=8, eval_limit=16, latency_batch=2, latency_tokens=8, isolation="none",
            progress=False, baselines=False)


def model_dir(tmp_path, layers: int = 4):
    from transformers import AutoModelForSequenceClassification

    directory = tmp_path / f"tiny-bert-{layers}"
    tokenizer = tiny_tokenizer(directory)
    config = tiny_config("bert")
    config.num_hidden_layers, config.vocab_size = layers, max(config.vocab_size, len(tokenizer))
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# --- parsing and planning -----------------------------------------------------------------------------------


def test_schedule_names_parse_and_bad_ones_are_one_line_errors() -> None:
    assert schedules.steps_of("one-shot") == 1
    assert schedules.steps_of("iterative:1") == 1
    assert schedules.steps_of("iterative:10") == 10
    for bad in ("iterative", "iterative:0", "iterative:-2", "iterative:2.5", "iterative:x", "gradual:3", ""):
        with pytest.raises(UsageError, match="is not 'one-shot' or 'iterative:STEPS'"):
            schedules.steps_of(bad)
    with pytest.raises(UsageError, match="given twice"):
        schedules.check(("iterative:2", "iterative:2"))
    with pytest.raises(UsageError, match="at least one schedule"):
        schedules.check(())


def test_the_cli_refuses_a_bad_schedule_with_exit_2(capsys) -> None:
    from harness.cli import main

    assert main(["bench", "--schedule", "iterative:zero", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "iterative:zero" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_methods_that_cannot_step_run_one_shot_and_a_grid_of_only_those_is_refused(tmp_path) -> None:
    from harness.config import BenchConfig
    from harness.planning import make_plan
    from harness.plugins import load_registry, parse_options

    directory = model_dir(tmp_path)
    config = BenchConfig().replace(models=(str(directory),), plugins=("head-gradient", "heads", "sparsegpt"),
                                   schedules=("one-shot", "iterative:3"), sparsities=(0.5,), baselines=False)
    registry = load_registry()
    plan = make_plan(config, registry, parse_options((), registry))
    by_method = {(s.name if s else "none", p.name): plan.schedules(s, p) for s, p in plan.methods}
    assert by_method == {("head-gradient", "heads"): ("one-shot", "iterative:3"), ("none", "sparsegpt"): ("one-shot",)}
    assert plan.cells_per_unit() == 1 + 3
    # sparsegpt updates the weights it keeps and uses no scores: nothing to re-score between steps
    only = config.replace(plugins=("sparsegpt",), schedules=("iterative:2",))
    with pytest.raises(UsageError, match="no method of this grid can prune in steps"):
        make_plan(only, registry, parse_options((), registry))


# --- one step is one shot -------------------------------------------------------------------------------------


def test_iterative_with_one_step_equals_one_shot_and_one_shot_run_ids_do_not_change(tmp_path) -> None:
    directory = model_dir(tmp_path)
    common = dict(models=[str(directory)], plugins=["head-gradient", "heads", "block-influence", "layers"],
                  sparsities=[0.5], **FAST)
    plain = harness.run(out=tmp_path / "plain", **common).rows
    both = harness.run(out=tmp_path / "both", schedules=["one-shot", "iterative:1"], **common).rows
    assert plain["status"].eq("ok").all() and both["status"].eq("ok").all(), both["error"].tolist()
    assert set(plain["run_id"]) <= set(both["run_id"])  # adding a schedule leaves one-shot run ids alone
    pruned = both[both["pruner"] != "none"]
    columns = ["score", "heads_kept", "params", "achieved_sparsity", "nonzero_params"]
    for scorer in ("head-gradient", "block-influence"):
        rows = pruned[pruned["scorer"] == scorer].set_index("schedule")
        assert rows.loc["one-shot", columns].tolist() == rows.loc["iterative:1", columns].tolist()
        assert rows.loc["one-shot", "run_id"] != rows.loc["iterative:1", "run_id"]
    assert (both.loc[both["pruner"] == "none", "schedule"] == "").all()


# --- re-scoring between steps equals scoring the pruned model ----------------------------------------------


class Recording:
    """A scorer and a pruner wrapping built-ins, recording what each call got and gave."""

    def __init__(self, name: str, granularity: str, score, compute_mask, options: dict) -> None:
        self.name, self.granularity, self.score, self.compute_mask = name, granularity, score, compute_mask
        self.options, self.scored, self.pruned = options, [], []

    def _score(self, request: ScoreRequest) -> torch.Tensor:
        model = copy.deepcopy(request.model)  # the gates of a gated pass come along (hooks): clean copy first
        values = self.score(request)
        self.scored.append((model, list(request.batches), values.clone()))
        return values

    def _mask(self, request: PruneRequest) -> torch.Tensor:
        mask = self.compute_mask(dataclasses.replace(request, options=self.options))
        if request.model is not None:  # not the planning's dry run on shapes
            self.pruned.append((request.sparsity, request.scores.clone(), mask.clone()))
        return mask

    @hookimpl
    def harness_scorers(self) -> list[Scorer]:
        return [Scorer(f"rec-{self.name}", self.granularity, self._score)]

    @hookimpl
    def harness_pruners(self) -> list[Pruner]:
        return [Pruner(f"rec-{self.granularity}s", self.granularity, self._mask)]


def heads_recording() -> Recording:
    from harness_plugins.head_gradient import score
    from harness_plugins.head_pruner import compute_mask

    return Recording("head-gradient", "head", score, compute_mask, {"scope": "layer"})


def layers_recording() -> Recording:
    from harness_plugins.layer_pruner import compute_mask
    from harness_plugins.layer_scores import block_influence

    return Recording("block-influence", "layer", block_influence, compute_mask, {})


def removed_and_rescored(recording: Recording, model, batches, keep: torch.Tensor) -> torch.Tensor:
    """The scorer run on the model with the units physically removed, mapped back to the dense positions."""
    from harness import surgery

    pruned = (surgery.remove_heads if recording.granularity == "head" else surgery.remove_layers)(
        copy.deepcopy(model), keep)
    values = recording.score(ScoreRequest(pruned, batches, 0))
    full = torch.full(keep.shape, float("nan"))
    if recording.granularity == "head":  # equal heads per layer (scope=layer): rows of the kept heads
        for layer in range(keep.shape[0]):
            full[layer, keep[layer]] = values[layer]
    else:
        full[keep] = values
    return full


@pytest.mark.parametrize("make", [heads_recording, layers_recording], ids=["heads", "layers"])
def test_each_step_scores_the_model_as_pruned_so_far_and_keeps_removed_units_removed(tmp_path, make) -> None:
    recording = make()
    directory = model_dir(tmp_path)
    result = harness.run(models=[str(directory)], plugins=[f"rec-{recording.name}", f"rec-{recording.granularity}s"],
                         sparsities=[0.5], schedules=["iterative:2"], out=tmp_path / "out",
                         plugins_objects=[recording], dtype="float32", **FAST)  # rescored by hand in float32
    assert result.ok, result.rows["error"].tolist()
    assert [round(s, 6) for s, _, _ in recording.pruned] == [0.25, 0.5]  # cumulative targets
    assert len(recording.scored) == 2
    dense, batches, first = recording.scored[0]
    _, keep1 = recording.pruned[0][1], recording.pruned[0][2]
    assert torch.equal(recording.pruned[0][1], first)  # step 1: the dense model's scores, as one shot
    gated = recording.scored[1][2]
    expected = removed_and_rescored(recording, dense, batches, keep1)
    assert torch.allclose(gated[keep1], expected[keep1], atol=1e-5), (gated, expected)
    step2 = recording.pruned[1][1]
    assert (step2[~keep1] < step2[keep1].min()).all()  # removed units rank below every kept one
    assert torch.equal(step2[keep1], gated[keep1])
    final_removed = (~(recording.pruned[1][2] & keep1)).sum().item()
    total = keep1.numel()
    assert final_removed == round(0.5 * total)
    row = result.rows[result.rows["pruner"] != "none"].iloc[0]
    assert row["schedule"] == "iterative:2" and abs(row["achieved_sparsity"] - 0.5) < 0.01


def test_rescoring_passes_are_cached_and_a_rerun_computes_nothing(tmp_path) -> None:
    directory = model_dir(tmp_path)
    args = dict(models=[str(directory)], plugins=["head-gradient", "heads"], sparsities=[0.5],
                schedules=["iterative:3"], **FAST)
    first = harness.run(out=tmp_path / "a", **args)
    assert first.counts["scoring_runs"] == 3  # the dense pass and two gated ones
    again = harness.run(out=tmp_path / "b", **args)  # a new --out: every cell runs, every score is cached
    assert again.counts["scoring_runs"] == 0 and again.counts["scores_hit"] >= 3
    columns = ["run_id", "score", "heads_kept"]
    assert first.rows[columns].values.tolist() == again.rows[columns].values.tolist()


def test_a_budget_dependent_scorer_is_scored_at_each_step_target(tmp_path) -> None:
    seen: list[float | None] = []

    def learned(request: ScoreRequest) -> torch.Tensor:
        seen.append(request.sparsity)
        config = request.model.config
        return torch.arange(config.num_hidden_layers * config.num_attention_heads, dtype=torch.float).reshape(
            config.num_hidden_layers, -1)

    class Plugin:
        @hookimpl
        def harness_scorers(self) -> list[Scorer]:
            return [Scorer("learned", "head", learned, per_sparsity=True)]

    directory = model_dir(tmp_path)
    result = harness.run(models=[str(directory)], plugins=["learned", "heads"], sparsities=[0.5],
                         schedules=["iterative:2"], out=tmp_path / "out", plugins_objects=[Plugin()], **FAST)
    assert result.ok, result.rows["error"].tolist()
    assert [round(s, 6) for s in seen] == [0.25, 0.5]  # each step at its own target, no pass at 0.5 on the dense


def test_old_leaderboards_without_a_schedule_column_read_as_one_shot(tmp_path) -> None:
    import pandas as pd

    from harness import leaderboard

    path = tmp_path / "leaderboard.csv"
    pd.DataFrame([
        {"run_id": "a", "model": "m", "task": "t", "adapter": "finetune", "scorer": "none", "pruner": "none",
         "sparsity": 0.0, "seed": 0, "score": 0.9, "status": "ok"},
        {"run_id": "b", "model": "m", "task": "t", "adapter": "finetune", "scorer": "s", "pruner": "heads",
         "sparsity": 0.5, "seed": 0, "score": 0.8, "status": "ok"},
    ]).to_csv(path, index=False)
    frame = leaderboard.read(path)
    assert frame["schedule"].tolist() == ["", "one-shot"]
    new = {"run_id": "c", "model": "m", "task": "t", "adapter": "finetune", "scorer": "s", "pruner": "heads",
           "sparsity": 0.5, "seed": 0, "score": 0.7, "status": "ok", "schedule": "iterative:2"}
    table = leaderboard.aggregate(pd.concat([frame, pd.DataFrame([new])], ignore_index=True))
    pruned = table[table["pruner"] == "heads"].set_index("schedule")
    assert pruned.loc["one-shot", "score_mean"] == 0.8 and pruned.loc["iterative:2", "score_mean"] == 0.7
