"""``--plugins all``: every method under the default adapter, the other adapters on the dense model only (their
rows the same as in the full cross), ``--cross-adapters`` for every adapter with every method."""

from __future__ import annotations

import pytest

import harness
from harness.planning import DEFAULT_ADAPTER

FAST = dict(train_steps=0, calib_examples=8, eval_limit=16, latency_batch=2, latency_tokens=8, isolation="none",
            progress=False, dtype="float32")


def plan_of(**settings):
    from harness.config import BenchConfig
    from harness.planning import make_plan
    from harness.plugins import load_registry, parse_options

    registry = load_registry()
    return make_plan(BenchConfig().replace(**settings), registry, parse_options((), registry))


def run_ids(plan) -> dict[str, set[str]]:
    """Each adapter's cell run ids, from the plan alone (nothing is loaded or trained)."""
    from harness.cache import Cache
    from harness.cells import UnitSpec, unit_cells
    from harness.tensorboard import Scalars
    from harness.unit import make_unit

    ids = {}
    for index, adapter in enumerate(plan.adapters):
        unit = make_unit(plan, UnitSpec(0, 0, index, 0), lambda row: None, Scalars(None), Cache(None))
        ids[adapter.name] = {unit.row(cell)["run_id"] for cell in unit_cells(unit, set())}
    return ids


def test_all_crosses_the_methods_with_the_default_adapter_and_gives_the_others_a_dense_row(tiny_model_dir) -> None:
    directory = tiny_model_dir()
    plan = plan_of(models=(str(directory),), plugins=("all",))
    crossed = plan_of(models=(str(directory),), plugins=("all",), cross_adapters=True)
    adapters = [adapter.name for adapter in plan.adapters]
    assert len(adapters) >= 5 and DEFAULT_ADAPTER in adapters and adapters == [a.name for a in crossed.adapters]
    assert plan.dense_only == frozenset(adapters) - {DEFAULT_ADAPTER} and crossed.dense_only == frozenset()
    per_unit = crossed.cells_per_unit()
    assert per_unit == 1 + len(plan.methods) * len(plan.sparsities) > 90  # every method, 3 sparsities, dense
    assert plan.total_cells() == per_unit + len(adapters) - 1
    assert crossed.total_cells() == per_unit * len(adapters)
    fast, full = run_ids(plan), run_ids(crossed)
    assert fast[DEFAULT_ADAPTER] == full[DEFAULT_ADAPTER] and len(fast[DEFAULT_ADAPTER]) == per_unit
    for name in set(adapters) - {DEFAULT_ADAPTER}:  # the dense row of the full cross, under the same run id
        assert len(fast[name]) == 1 and fast[name] < full[name] and len(full[name]) == per_unit


def test_named_adapters_are_crossed_with_every_method(tiny_model_dir) -> None:
    plan = plan_of(models=(str(tiny_model_dir()),), plugins=("lora", "finetune", "magnitude"))
    assert plan.dense_only == frozenset() and [a.name for a in plan.adapters] == ["lora", "finetune"]
    assert plan.total_cells() == 2 * plan.cells_per_unit() and plan.cells_per_unit() > 1


def test_the_cli_flag_sets_cross_adapters() -> None:
    from harness.cli import _settings, build_parser

    args = build_parser().parse_args(["bench", "--plugins", "all", "--cross-adapters"])
    assert _settings(args)["cross_adapters"] is True
    assert "cross_adapters" not in _settings(build_parser().parse_args(["bench", "--plugins", "all"]))


@pytest.mark.usefixtures("one_thread")
def test_a_run_of_all_writes_every_method_once_and_one_dense_row_per_other_adapter(tiny_model_dir, tmp_path) -> None:
    result = harness.run(models=[str(tiny_model_dir())], plugins=["all"], sparsities=[0.5], out=tmp_path / "out",
                         options=["l0-gates.steps=2"], **FAST)
    rows = result.rows
    assert result.cells == len(rows) and (rows.status == "ok").all(), rows[rows.status != "ok"].error.tolist()
    by_adapter = rows.groupby("adapter").size().to_dict()
    methods = {(s, p) for s, p, a in zip(rows.scorer, rows.pruner, rows.adapter) if a == DEFAULT_ADAPTER}
    assert by_adapter.pop(DEFAULT_ADAPTER) == len(methods) > 30  # the dense cell and every method at 50%
    assert set(by_adapter.values()) == {1} and len(by_adapter) >= 4
    others = rows[rows.adapter != DEFAULT_ADAPTER]
    assert (others.pruner == "none").all() and (others.sparsity == 0).all()


def test_the_shared_loop_trains_exactly_as_adamw_one_tensor_at_a_time(monkeypatch) -> None:
    """The loop's AdamW updates all tensors per operation (foreach): faster, and the same bits as the per-tensor
    loop torch would pick on a CPU, so fine-tunes (and every score after them) are unchanged."""
    import copy

    import torch
    from conftest import batch_for, tiny_model

    from harness import TrainRequest, modeling

    model = tiny_model("bert")
    batches = [{**batch_for(model, batch_size=4, tokens=6, seed=step), "labels": torch.tensor([0, 1, step % 2, 1])}
               for step in range(8)]
    options = {"weight_decay": 0.01, "warmup_ratio": 0.1, "max_grad_norm": 1.0}
    fast, slow = copy.deepcopy(model), copy.deepcopy(model)
    modeling.train_adamw(TrainRequest(fast, batches, 8, 3e-3, 0, options))
    adamw = torch.optim.AdamW
    def per_tensor(*args, **kw):
        return adamw(*args, **{k: v for k, v in kw.items() if k not in ("foreach", "fused")}, foreach=False)

    monkeypatch.setattr(torch.optim, "AdamW", per_tensor)
    modeling.train_adamw(TrainRequest(slow, batches, 8, 3e-3, 0, options))
    changed = [name for (name, p), q in zip(model.named_parameters(), fast.parameters()) if not torch.equal(p, q)]
    assert len(changed) > 10  # it trained
    assert all(torch.equal(p, q) for p, q in zip(fast.parameters(), slow.parameters()))
