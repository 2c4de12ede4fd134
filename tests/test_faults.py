"""Results that stay true under faults (issue 18): corrupt cache entries, edited code, concurrent runs,
plugins that crash, exit or hang, and outputs or caches that cannot be written.

Each test compares against an uninterrupted reference run of the same grid: a
fault may cost its own cells (error rows that say why), never change another's.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fault_plugins import Faulty

from harness import leaderboard
from harness.cli import main

FAST = ["--train-steps", "3", "--calib-examples", "16", "--latency-batch", "2", "--latency-tokens", "8",
        "--eval-limit", "32", "--no-progress", "--sparsities", "0.5"]
COMPARED = ["run_id", "scorer", "pruner", "sparsity", "seed", "status", "score", "heads_kept", "params"]


def rows(out: Path) -> pd.DataFrame:
    return leaderboard.read(out / "leaderboard.csv")


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[COMPARED].sort_values("run_id").reset_index(drop=True)


def bench(model: Path, out: Path, *extra: str, plugins: str = "head-gradient,random,heads,finetune",
          objects: tuple = ()) -> int:
    return main(["bench", "--models", str(model), "--out", str(out), "--plugins", plugins, *FAST, *extra],
                extra=list(objects))


@pytest.fixture
def model(tiny_model_dir) -> Path:
    return tiny_model_dir("bert")


# 4. A fault costs one cell, not the grid ---------------------------------------------------------------


def test_a_plugin_that_segfaults_exits_or_hangs_costs_only_its_cells(model, tmp_path, capsys, monkeypatch) -> None:
    assert bench(model, tmp_path / "reference") == 0
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "other-cache"))  # nothing reused from the reference run
    plugins = "head-gradient,random,segfaults,exits,raises-exit,hangs,heads,finetune"
    assert bench(model, tmp_path / "out", "--cell-timeout", "20", plugins=plugins, objects=(Faulty(),)) == 1
    frame = rows(tmp_path / "out").set_index("scorer")
    assert len(frame) == 1 + 6 and frame.index.is_unique
    errors = frame.loc[["segfaults", "exits", "raises-exit", "hangs"], "error"]
    assert errors["segfaults"] == "worker died: signal 11 (SIGSEGV) (during scoring segfaults)"
    assert errors["exits"] == "worker exited with status 3 before finishing (during scoring exits)"
    assert errors["raises-exit"] == "SystemExit: 4"  # an exception, caught in the cell like any other
    assert errors["hangs"] == "timed out after 20 s (during scoring hangs)"
    healthy = frame[frame["status"] == "ok"].reset_index()
    assert set(healthy["scorer"]) == {"none", "head-gradient", "random"}
    pd.testing.assert_frame_equal(comparable(healthy), comparable(rows(tmp_path / "reference")))
    assert "failed: hangs/heads sparsity 0.5 seed 0: timed out after 20 s" in capsys.readouterr().out


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (this container's pid 1 may never reap orphans)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def test_a_timeout_also_stops_what_the_plugin_started(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FAULT_PID_FILE", str(tmp_path / "helper.pid"))
    plugins = "spawns-and-hangs,heads,finetune"
    # 20 s, not less: the fine-tune is a step too, and on a loaded 2-core machine it can take several seconds
    assert bench(model, tmp_path / "out", "--cell-timeout", "20", "--no-baselines", plugins=plugins,
                 objects=(Faulty(),)) == 1
    error = rows(tmp_path / "out").set_index("scorer").loc["spawns-and-hangs", "error"]
    assert error == "timed out after 20 s (during scoring spawns-and-hangs)"
    helper = int((tmp_path / "helper.pid").read_text())
    assert not _running(helper), "the plugin's own subprocess outlived the timed-out unit"


def test_in_process_a_system_exit_is_a_cell_error_not_the_end_of_the_grid(model, tmp_path) -> None:
    plugins = "head-gradient,raises-exit,heads,finetune"
    assert bench(model, tmp_path / "out", "--isolation", "none", plugins=plugins, objects=(Faulty(),)) == 1
    frame = rows(tmp_path / "out").set_index("scorer")
    assert frame.loc["raises-exit", "error"] == "SystemExit: 4"
    assert (frame.drop(index="raises-exit")["status"] == "ok").all() and len(frame) == 4  # with the random baseline


def test_plugins_that_cannot_travel_to_a_child_are_refused_before_any_work(model, tmp_path, capsys) -> None:
    from harness import Scorer, hookimpl

    class Local:
        @hookimpl
        def harness_scorers(self):
            return [Scorer("local", "head", lambda request: None)]

    assert bench(model, tmp_path / "out", plugins="local,heads", objects=(Local(),)) == 2
    assert "--isolation process needs plugins that can be pickled" in capsys.readouterr().err
    assert not (tmp_path / "out" / "leaderboard.csv").exists()


# 1. Cache entries are verified ------------------------------------------------------------------------


def _rewrite(path: Path, change) -> None:
    """Re-save a cache entry with one tensor changed and the SAME metadata: a valid file with wrong content."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _entries(kind: str) -> list[Path]:
    return sorted((Path(os.environ["HARNESS_CACHE"]) / kind).glob("*.safetensors"))


def test_corrupt_cache_entries_are_recomputed_never_used(model, tmp_path, capfd) -> None:
    assert bench(model, tmp_path / "reference") == 0
    reference = comparable(rows(tmp_path / "reference"))
    [fine_tune] = _entries("models")
    _rewrite(fine_tune, lambda t: t.__setitem__("classifier.weight", -t["classifier.weight"]))
    first, second = _entries("scores")
    _rewrite(first, lambda t: t.update({k: -v for k, v in t.items()}))
    second.write_bytes(second.read_bytes()[:100])  # a truncated copy
    capfd.readouterr()
    assert bench(model, tmp_path / "again") == 0
    captured = capfd.readouterr()  # the warnings come from the unit's child process
    for path in (fine_tune, first, second):
        assert f"harness: warning: cache entry {path} is not usable" in captured.err
    assert "fine-tunes run 1 (cached 0), scoring passes run 2 (cached 0)" in captured.out
    pd.testing.assert_frame_equal(comparable(rows(tmp_path / "again")), reference)
    assert bench(model, tmp_path / "third") == 0  # the recomputed entries are good again
    assert "fine-tunes run 0 (cached 1), scoring passes run 0 (cached 2)" in capfd.readouterr().out


def test_a_cache_that_cannot_be_written_costs_only_the_reuse(model, tmp_path, capfd, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HARNESS_CACHE", str(blocker / "cache"))  # every write fails (root can write anywhere else)
    assert bench(model, tmp_path / "out") == 0
    captured = capfd.readouterr()
    assert "harness: warning: cannot write cache entry" in captured.err and "carrying on without it" in captured.err
    frame = rows(tmp_path / "out")
    assert (frame["status"] == "ok").all() and len(frame) == 3


# 2. Code is part of the identity ---------------------------------------------------------------------------

PLUGIN = '''
import torch
from harness import Scorer, hookimpl

SHIFT = {shift}


def score(request):
    return torch.arange(12.0).reshape(3, 4) * SHIFT


class Plugin:
    @hookimpl
    def harness_scorers(self):
        return [Scorer("edited", "head", score)]
'''


def test_editing_a_plugin_changes_its_run_ids_and_forces_its_scoring_pass(model, tmp_path, capsys, monkeypatch) -> None:
    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "edited_plugin.py").write_text(PLUGIN.format(shift=1.0))
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("edited_plugin")
    plugins = "edited,head-gradient,heads,finetune"
    assert bench(model, tmp_path / "out", "--no-baselines", plugins=plugins, objects=(module.Plugin(),)) == 0
    before = rows(tmp_path / "out").set_index("scorer")["run_id"]
    (folder / "edited_plugin.py").write_text(PLUGIN.format(shift=-1.0))  # the same version, other code
    module = importlib.reload(module)
    capsys.readouterr()
    assert bench(model, tmp_path / "out", "--no-baselines", plugins=plugins, objects=(module.Plugin(),)) == 0
    out = capsys.readouterr().out
    assert "1 ok, 0 failed, 2 already done; fine-tunes run 0 (cached 1), scoring passes run 1 (cached 0)" in out
    after = rows(tmp_path / "out")
    assert len(after) == 4 and after["run_id"].is_unique
    edited = after[after["scorer"] == "edited"]
    assert before["edited"] in set(edited["run_id"]) and len(edited) == 2
    assert set(after[after["scorer"] != "edited"]["run_id"]) == {before["none"], before["head-gradient"]}
    assert "1 older rows of the same cells (other code or budget) stay in the leaderboard" in out
    seeds = pd.read_csv(tmp_path / "out" / "leaderboard_seeds.csv").set_index("scorer")
    assert seeds.loc["edited", "seeds"] == 1 and pd.isna(seeds.loc["edited", "score_sd"]), "old and new never mix"


def test_only_the_newest_row_of_a_cell_is_aggregated(tmp_path) -> None:
    path = tmp_path / "leaderboard.csv"
    cell = {"model": "m", "task": "t", "adapter": "finetune", "scorer": "s", "pruner": "heads", "granularity": "head",
            "sparsity": 0.5, "seed": 0, "status": "ok", "metric": "accuracy"}
    leaderboard.append(path, [{**cell, "run_id": "old-code", "score": 0.2}])
    leaderboard.append(path, [{**cell, "run_id": "new-code", "score": 0.8}])
    leaderboard.append(path, [{**cell, "seed": 1, "run_id": "other-seed", "score": 0.6}])
    frame = leaderboard.read(path)
    assert len(frame) == 3 and list(leaderboard.current(frame)["run_id"]) == ["new-code", "other-seed"]
    [row] = leaderboard.aggregate(frame).to_dict("records")
    assert row["seeds"] == 2 and row["score_mean"] == pytest.approx(0.7)


def test_code_identity_follows_the_modules_a_plugin_uses(tmp_path, monkeypatch) -> None:
    from harness import Scorer, identity

    package = tmp_path / "thirdparty"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def weight():\n    return 1.0\n")
    (package / "settings.py").write_text("SHIFT = 1.0\n")
    (package / "scorer.py").write_text("from thirdparty.helpers import weight\nfrom thirdparty.settings import SHIFT\n\n"
                                       "def score(request):\n    return weight() * SHIFT\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer_module = importlib.import_module("thirdparty.scorer")
    record = Scorer("third", "head", scorer_module.score)
    closure = identity.module_closure("thirdparty.scorer")
    assert closure == ["thirdparty.helpers", "thirdparty.scorer", "thirdparty.settings"]
    first = identity.of(record)
    assert first.startswith("(not packaged) ")
    (package / "helpers.py").write_text("def weight():\n    return 2.0\n")
    second = identity.of(record)
    assert second != first  # a helper module's edit is the plugin's edit
    (package / "settings.py").write_text("SHIFT = -1.0\n")  # a constant imported by value: still seen
    assert identity.of(record) not in (first, second)
    builtin = identity.of(Scorer("x", "head", identity.of))  # a function of the harness package itself
    assert builtin.startswith("prune-harness ")


def test_code_identity_does_not_depend_on_which_siblings_this_process_imported(tmp_path, monkeypatch) -> None:
    """``from pkg import helper`` brings in ``pkg``, whose attributes are every submodule imported so far:
    the parent of a run imports every plugin, a worker only the ones it runs, and both must agree."""
    from harness import Scorer, identity

    package = tmp_path / "lazypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("FACTOR = 2.0\n")
    (package / "other.py").write_text("UNRELATED = 1\n")
    (package / "scorer.py").write_text("def score(request):\n    from lazypkg import helper\n\n"
                                       "    return helper.FACTOR\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    record = Scorer("lazy", "head", importlib.import_module("lazypkg.scorer").score)
    before = identity.of(record)  # helper not imported yet: its source still counts
    assert identity.module_closure("lazypkg.scorer") == ["lazypkg", "lazypkg.helper", "lazypkg.scorer"]
    importlib.import_module("lazypkg.helper")
    importlib.import_module("lazypkg.other")
    assert identity.module_closure("lazypkg.scorer") == ["lazypkg", "lazypkg.helper", "lazypkg.scorer"]
    assert identity.of(record) == before


# 3. Concurrent runs on one --out ---------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")  # the reference on the runs' one thread: thread count is part of the keys
def test_two_runs_on_one_out_compute_each_unit_once_and_end_with_the_reference_rows(model, tmp_path) -> None:
    grid = ["--models", str(model), "--seeds", "0,1", "--plugins", "head-gradient,random,heads,finetune", *FAST]
    assert main(["bench", "--out", str(tmp_path / "reference"), *grid]) == 0
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "shared-cache"), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "harness.cli", "bench", "--out", str(tmp_path / "out"), *grid]
    runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    final = rows(tmp_path / "out")
    assert len(final) == 6 and final["run_id"].is_unique and (final["status"] == "ok").all()
    pd.testing.assert_frame_equal(comparable(final), comparable(rows(tmp_path / "reference")))
    summaries = [next(line for line in out.splitlines() if " already done;" in line) for out, _ in outputs]
    fine_tunes = [int(s.split("fine-tunes run ")[1].split()[0]) for s in summaries]
    scored = [int(s.split("scoring passes run ")[1].split()[0]) for s in summaries]
    computed = [int(s.split(" ok,")[0]) for s in summaries]
    skipped = [int(s.split("failed, ")[1].split()[0]) for s in summaries]
    assert sum(fine_tunes) == 2 and sum(scored) == 4, summaries  # 2 units, 2 scorers each: every pass once
    assert sum(computed) == 6 and [c + s for c, s in zip(computed, skipped)] == [6, 6], summaries


def test_an_ok_row_is_never_replaced_by_an_error_row(tmp_path) -> None:
    path = tmp_path / "leaderboard.csv"
    ok = {"run_id": "a", "status": "ok", "score": 0.9, "params": 22713986, "seed": 0}
    leaderboard.append(path, [ok])
    stored = leaderboard.append(path, [{"run_id": "a", "status": "error", "error": "late failure", "seed": 0}])
    assert stored[0]["status"] == "ok" and stored[0]["score"] == 0.9
    again = leaderboard.append(path, [{"run_id": "b", "status": "error", "error": "x", "seed": 1}])
    assert again[0]["status"] == "error"
    fixed = leaderboard.append(path, [{"run_id": "b", "status": "ok", "score": 0.5, "params": 7, "seed": 1}])
    assert fixed[0]["status"] == "ok"  # a retried cell still replaces its error row
    frame = leaderboard.read(path)
    assert list(frame["status"]) == ["ok", "ok"] and list(frame["run_id"]) == ["a", "b"]


# 5. Outputs that cannot be written or read -----------------------------------------------------------------


def test_integer_columns_stay_integers_beside_error_rows(tmp_path) -> None:
    path = tmp_path / "leaderboard.csv"
    leaderboard.append(path, [{"run_id": "a", "status": "ok", "params": 22713986, "heads_kept": 72, "seed": 0}])
    leaderboard.append(path, [{"run_id": "b", "status": "error", "error": "boom", "seed": 0}])
    text = path.read_text()
    assert "22713986," in text and "22713986.0" not in text and ",72," in text


def test_an_unwritable_out_is_one_line_and_exit_2(model, tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert bench(model, blocker / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: --out ") and "cannot be written" in err and err.count("\n") == 1


def test_an_unreadable_leaderboard_is_refused_and_kept(model, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    garbage = b"\x00\x01\xff binary \"unclosed\n" * 3
    (out / "leaderboard.csv").write_bytes(garbage)
    assert bench(model, out) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and err.count("\n") == 1 and "leaderboard" in err
    assert (out / "leaderboard.csv").read_bytes() == garbage, "what a user produced is never overwritten"


def test_a_disk_that_fills_mid_run_is_one_line_and_exit_2(model, tmp_path, capsys, monkeypatch) -> None:
    import errno

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(leaderboard, "append", full)
    assert bench(model, tmp_path / "out", "--isolation", "none") == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == f"harness: error: cannot write {tmp_path / 'out' / 'leaderboard.csv'}: No space left on device"


# 7. File names derived from user input stay inside --out --------------------------------------------------


def test_names_from_user_input_become_slugs_confined_to_out(tmp_path) -> None:
    from harness.atomic import confined, slug

    assert slug("../../etc/passwd") == "etc-passwd" and slug("..") == "unnamed" and slug("a/b") == "a-b"
    for name in ("../escape", "/abs/path", "..", "x/../../y"):
        path = confined(tmp_path, "spectra", name)
        assert tmp_path.resolve() in path.parents


def test_a_child_refuses_to_run_code_edited_after_the_run_started(tmp_path, monkeypatch) -> None:
    from harness import identity, isolation
    from harness.config import BenchConfig
    from harness.planning import Plan

    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "midrun_plugin.py").write_text(PLUGIN.format(shift=1.0))
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("midrun_plugin")
    [scorer] = module.Plugin().harness_scorers()
    plan = Plan(BenchConfig(), [], [], [], [(scorer, None)], [0.5])
    plan.all_code()
    assert isolation.changed_code(plan, identity.core_code()) == []
    assert isolation.changed_code(plan, "another-harness") == ["harness"]
    (folder / "midrun_plugin.py").write_text(PLUGIN.format(shift=2.0))  # edited while the run goes on
    assert isolation.changed_code(plan, identity.core_code()) == ["edited"]


def test_keys_change_with_any_recorded_library_version(monkeypatch) -> None:
    from harness import cache

    recorded = cache._versions()
    assert {"torch", "transformers", "peft", "datasets", "scikit-learn", "numpy"} <= set(recorded)
    before = cache.digest({"cell": 1})
    monkeypatch.setattr(cache, "_versions", lambda: {**recorded, "peft": "0.0.1"})
    assert cache.digest({"cell": 1}) != before  # a LoRA result from another PEFT is another result
