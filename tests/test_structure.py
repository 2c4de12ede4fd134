"""The structure the next methods build on: granularities as records, keys hashed from config groups,
grid files, and ``harness.run``."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import REPO, error_of

import harness
from harness import Granularity, Pruner, PruneRequest, Scorer, ScoreRequest, hookimpl
from harness.config import BenchConfig, Budget

FAST = dict(sparsities=[0.5], train_steps=3, calib_examples=8, eval_limit=16, latency_batch=2, latency_tokens=8,
            isolation="none", progress=False, options=["l0-gates.steps=2"])


# --- a granularity defined in this file: whole output rows of the --targets weights -------------------------


def row_shapes(model: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    modules = dict(model.named_modules())
    return {name: (modules[name].weight.shape[0],) for name in targets}


def row_masks(model: torch.nn.Module, keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {name: rows[:, None].expand_as(modules[name].weight).clone() for name, rows in keep.items()}


def apply_rows(model: torch.nn.Module, keep: dict[str, torch.Tensor]) -> torch.nn.Module:
    from harness import surgery

    return surgery.apply_weight_masks(model, row_masks(model, keep))


ROW = Granularity("row", row_shapes, apply_rows, lambda model, targets: tuple(targets),
                  "output rows of each target weight", uses_targets=True, held=row_masks)


def row_norms(request: ScoreRequest) -> dict[str, torch.Tensor]:
    modules = dict(request.model.named_modules())
    return {name: modules[name].weight.detach().norm(dim=1) for name in request.targets}


def lowest_rows(request: PruneRequest) -> dict[str, torch.Tensor]:
    keep = {}
    for name, scores in request.scores.items():
        mask = torch.ones(len(scores), dtype=torch.bool)
        mask[scores.argsort()[: round(request.sparsity * len(scores))]] = False
        keep[name] = mask
    return keep


class RowPlugin:
    @hookimpl
    def harness_granularities(self):
        return [ROW]

    @hookimpl
    def harness_scorers(self):
        return [Scorer("row-norm", "row", row_norms, "L2 norm of each output row")]

    @hookimpl
    def harness_pruners(self):
        return [Pruner("rows", "row", lowest_rows, "the lowest-scoring rows of each module")]


def test_a_granularity_defined_in_a_test_runs_end_to_end(tmp_path, tiny_model_dir) -> None:
    result = harness.run(models=[str(tiny_model_dir("bert"))], plugins=["row-norm", "rows"], out=tmp_path / "out",
                         plugins_objects=[RowPlugin()], **FAST)
    rows = result.rows
    assert result.ok and len(rows) == 2 and result.cells == 2
    pruned = rows[rows["pruner"] == "rows"].iloc[0]
    assert pruned["granularity"] == "row" and pruned["targets"] == "linear"
    assert abs(pruned["achieved_sparsity"] - 0.5) < 0.02  # half of every row-pruned weight is zero
    assert pruned["nonzero_params"] < rows[rows["pruner"] == "none"].iloc[0]["nonzero_params"]
    assert result.counts["scoring_runs"] == 1 and result.counts["fine_tunes_run"] == 1


def test_the_test_granularity_passes_conformance() -> None:
    from harness import conformance

    conformance.check_plugin(ROW)
    [scorer] = RowPlugin().harness_scorers()
    [pruner] = RowPlugin().harness_pruners()
    conformance.check_plugin(scorer, granularities=(ROW,))
    conformance.check_plugin(pruner, granularities=(ROW,))


def test_no_granularity_switch_outside_the_granularity_modules() -> None:
    literal = r"[\"'](head|neuron|weight)[\"']"
    switch = re.compile(rf"granularity\s*(==|!=)\s*{literal}|granularity\s*(not\s+)?in\s*[(\[{{]\s*{literal}"
                        rf"|{literal}\s*(==|!=|in)\s|{literal}\s*:\s*\(")  # comparisons, and tables keyed by name
    found = []
    for path in [*(REPO / "harness").rglob("*.py"), *(REPO / "plugins").glob("*.py")]:
        if "granularities" in path.parts:
            continue
        found += [f"{path.name}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if switch.search(line)]
    assert found == []


def test_an_unknown_granularity_is_a_one_line_error(capsys, tiny_model_dir) -> None:
    class Orphan:
        @hookimpl
        def harness_scorers(self):
            return [Scorer("orphan", "channel", row_norms)]

    line = error_of(capsys, ["bench", "--models", str(tiny_model_dir("bert")), "--plugins", "orphan,heads",
                             "--isolation", "none"], extra=(Orphan(),))
    assert "granularity 'channel' is not installed (known: activation, head, layer, neuron, weight)" in line


# --- keys hashed mechanically from the config groups ----------------------------------------------------------


@dataclass(frozen=True)
class WiderBudget(Budget):
    """A budget with one more field, as the next method might add (its stage: scoring)."""

    warmup: int = field(default=7, metadata={"stage": "score"})


def _keys(config: BenchConfig, model_dir: Path) -> dict[str, str]:
    from harness.cells import Cell, unit_specs
    from harness.planning import make_plan
    from harness.plugins import load_registry
    from harness.scoring import score_key
    from harness.tensorboard import Scalars
    from harness.unit import cache_of, make_unit

    plan = make_plan(config, load_registry(), {})
    unit = make_unit(plan, unit_specs(plan)[0], lambda row: None, Scalars(None), cache_of(plan))
    scorer, pruner = plan.methods[0]
    return {"fine-tune": unit.unit_key(), "scores": score_key(unit, scorer, None, plan.granularity(scorer)),
            "dense row": unit.row(Cell())["run_id"], "pruned row": unit.row(Cell(scorer, pruner, 0.5))["run_id"]}


def test_a_new_budget_field_changes_keys_without_touching_key_code(tiny_model_dir) -> None:
    model = tiny_model_dir("bert")
    base = BenchConfig().replace(models=[str(model)], plugins=["head-gradient", "heads"], sparsities=[0.5],
                                 baselines=False)
    before = _keys(base, model)
    wider = dataclasses.replace(base, budget=WiderBudget())
    after = _keys(wider, model)
    assert after["fine-tune"] == before["fine-tune"]  # a scoring-stage field leaves the fine-tune's key alone
    assert all(after[k] != before[k] for k in ("scores", "dense row", "pruned row"))
    other = _keys(dataclasses.replace(base, budget=WiderBudget(warmup=8)), model)
    assert all(other[k] != after[k] for k in ("scores", "dense row", "pruned row"))
    unstaged = dataclasses.make_dataclass("Unstaged", [("seed_offset", int, field(default=1))], bases=(Budget,),
                                          frozen=True)
    everything = _keys(dataclasses.replace(base, budget=unstaged()), model)
    assert all(everything[k] != before[k] for k in before)  # no stage: it changes every key
    recorded = _keys(base.replace(latency_tokens=16), model)
    assert recorded["fine-tune"] == before["fine-tune"] and recorded["scores"] == before["scores"]
    assert recorded["pruned row"] != before["pruned row"]  # measurement settings are part of every row


# --- grid files and the Python API ----------------------------------------------------------------------------


def test_a_grid_file_round_trips_and_flags_override_it(tmp_path) -> None:
    from harness import config as configs
    from harness.cli import _config, build_parser

    chosen = BenchConfig().replace(tasks=["sst2"], sparsities=[0.3, 0.6], seeds=[0, 1], train_steps=50,
                                   learning_rate=3e-5, latency_tokens=64, options=["heads.scope=global"])
    path = tmp_path / "grid.toml"
    path.write_text(configs.to_toml(chosen))
    assert configs.load(path) == chosen
    args = build_parser().parse_args(["bench", "--config", str(path), "--seeds", "2", "--batch-size", "8"])
    args.argv = []
    merged = _config(args)
    assert merged.grid.seeds == (2,) and merged.budget.batch_size == 8  # the flags given win
    assert merged.grid.sparsities == (0.3, 0.6) and merged.budget.learning_rate == 3e-5  # the rest from the file


@pytest.mark.parametrize("text, message", [
    ("[grid]\nsparsity = [0.5]\n", "unknown setting 'sparsity' (did you mean 'sparsities'?)"),
    ("[grids]\nseeds = [1]\n", "unknown table [grids] (did you mean [grid]?)"),
    ("[grid]\nbatch_size = 8\n", "batch_size belongs in [budget], not [grid]"),
    ("[budget]\nbatch_size = \"eight\"\n", "batch_size takes an int, not 'eight'"),
    ("[grid]\nseeds = 1 2\n", "line 2"),
])
def test_a_bad_grid_file_is_a_one_line_error(capsys, tmp_path, text, message) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    line = error_of(capsys, ["bench", "--config", str(path)])
    assert message in line


def test_every_published_leaderboard_has_a_grid_file_that_loads() -> None:
    from harness import config as configs

    boards = sorted(p.stem for p in (REPO / "leaderboards").glob("*.csv") if not p.stem.endswith("-summary"))
    grids = {p.stem: configs.load(p) for p in (REPO / "leaderboards").glob("*.toml")}
    assert boards and [b for b in boards if b not in grids] == []
    for name, config in grids.items():
        assert config.grid.plugins and config.grid.seeds, name
        # computed on this CPU in a pinned precision: a regeneration on a GPU or under another `auto` would differ
        assert config.budget.device == "cpu" and config.budget.dtype in ("float32", "bfloat16"), name


def test_run_takes_keyword_settings_and_checks_them() -> None:
    from harness.errors import UsageError

    with pytest.raises(UsageError, match="unknown setting 'sparsity' \\(did you mean 'sparsities'\\?\\)"):
        harness.run(sparsity=[0.5])
    with pytest.raises(UsageError, match="seeds takes a list of int values"):
        harness.run(seeds=["zero"])
    with pytest.raises(UsageError, match="--data-dir /no/such/folder is not a folder"):
        harness.run(data_dir="/no/such/folder")  # the Python API checks what the command line checks


def test_the_readme_python_example_runs(tmp_path, tiny_model_dir, monkeypatch) -> None:
    """The README's notebook example, on a tiny model and the built-in task instead of MiniLM and SST-2."""
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(import harness\n.*?)```", text, re.S)
    assert code, "README.md lost its harness.run example"
    real = harness.run
    model = str(tiny_model_dir("bert"))

    def tiny(config=None, **settings):
        settings.update(FAST, models=[model], tasks=["synthetic"], data_dir=None, out=tmp_path / "out")
        return real(config, **settings)

    monkeypatch.setattr(harness, "run", tiny)
    scope: dict = {}
    exec(compile(code.group(1), "README.md", "exec"), scope)
    result = scope["result"]
    assert result.ok and result.counts["fine_tunes_run"] == 2 and len(result.rows) == 2 * 3  # dense + 2 sparsities
    assert list(scope["table"]["seed"].unique()) == [0, 1]


def _harness_imports() -> dict[str, set[str]]:
    """Module -> the harness modules it imports (at any level, outside ``if TYPE_CHECKING``), root excluded."""
    import ast

    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (REPO / "harness").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        stack = [ast.parse(path.read_text())]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
            stack.extend(ast.iter_child_nodes(node))
        graph[name] = {m for m in found if m in modules and m not in ("harness", name)}
    return graph


def test_harness_modules_import_each_other_without_cycles() -> None:
    graph = _harness_imports()
    assert {"harness.cells", "harness.unit", "harness.executor", "harness.ray_executor"} <= set(graph)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    assert cycles == []


def test_pruner_scalars_and_the_task_protocol_reach_the_rows(tmp_path, tiny_model_dir) -> None:
    import json

    from harness import Task, TaskData
    from harness.records import Split

    def logging_rows(request: PruneRequest) -> dict[str, torch.Tensor]:
        request.log("rows/first_module_sparsity", 0.5, 0)
        return lowest_rows(request)

    def load(request):
        texts = tuple(f"example {i} {'good' if i % 2 else 'bad'}" for i in range(40))
        split = Split(texts, tuple(i % 2 for i in range(40)))
        return TaskData(split, split, ("bad", "good"), protocol={"source": "generated", "examples": 40})

    class Plugin(RowPlugin):
        @hookimpl
        def harness_pruners(self):
            return [Pruner("rows", "row", logging_rows)]

        @hookimpl
        def harness_tasks(self):
            return [Task("tiny-task", load)]

    result = harness.run(models=[str(tiny_model_dir("bert"))], tasks=["tiny-task"], plugins=["row-norm", "rows"],
                         out=tmp_path / "out", plugins_objects=[Plugin()], **{**FAST, "train_steps": 0})
    extras = {row["pruner"]: json.loads(row["extras"]) for _, row in result.rows.iterrows()}
    for found in extras.values():  # where it ran, and whose timing a model of the same kernels reused
        found.pop("device_name"), found.pop("latency_from", None)
    evaluated = min(FAST.get("eval_limit") or 40, 40)  # what the metric is over: the first --eval-limit examples
    assert extras["none"] == {"examples": 40, "source": "generated", "eval_examples": evaluated}
    calibration = FAST.get("calib_examples", 512)
    assert extras["rows"] == {"examples": 40, "rows/first_module_sparsity": 0.5, "source": "generated",
                              "calib_examples": min(calibration, 40), "eval_examples": evaluated,
                              "latency_kernel": "dense: zeros are multiplied, so the speed is the dense kernel's"}
