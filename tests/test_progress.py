"""Progress that tells the truth: phases announced by core and plugins (fine-tune steps, scoring passes, L0 gate
training, recovery, evaluation batches, latency timing), across the child-process pipe, and a cells ETA that a
long fine-tune does not inflate."""

from __future__ import annotations

import io
import itertools
import math

import pytest

import harness
from harness import Scorer, ScoreRequest, hookimpl, progress
from harness.executor import CellClock, Display

TINY = dict(train_steps=3, calib_examples=8, eval_limit=100, latency_batch=2, latency_tokens=8, baselines=False,
            progress=False, use_cache=False, sparsities=(0.5,), seeds=(0,), recover="finetune", recover_steps=2,
            plugins=("head-gradient", "l0-gates", "heads"), options=("l0-gates.steps=4",))
EVAL_BATCHES = math.ceil(100 / 64)  # synthetic's validation (800 examples) cut to --eval-limit, 64 a batch


class Recorder:
    """A listener that keeps every event: (event, names of the open phases, the phase's total and done)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[str, ...], int | None, int]] = []

    def __call__(self, event: progress.Event, phases: tuple[progress.Phase, ...]) -> None:
        inner = phases[-1]
        self.events.append((event, tuple(p.name for p in phases), inner.total, inner.done))

    def ends(self, name: str) -> list[tuple[int | None, int]]:
        """(total, done) of every phase named ``name`` as it ended."""
        return [(total, done) for event, names, total, done in self.events if event == "end" and names[-1] == name]

    def starts(self) -> list[str]:
        return [names[-1] for event, names, _, _ in self.events if event == "start"]


# --- the API -----------------------------------------------------------------------------------------------------


def test_nothing_listens_by_default_and_a_phase_is_then_a_no_op() -> None:
    assert not progress.active()
    with progress.phase("work", total=3) as step:
        assert list(progress.ticking(iter("abc"), step)) == ["a", "b", "c"]
        step(5)
    assert not progress.active()


def test_nested_phases_reach_the_listener_with_counts_and_end_even_on_error() -> None:
    recorder = Recorder()
    with progress.listening(recorder):
        assert progress.active()
        with progress.phase("outer") as outer:
            with progress.phase("inner", total=2) as inner:
                inner()
                inner()
            outer(3)
        with pytest.raises(RuntimeError), progress.phase("failing", total=5) as step:
            step()
            raise RuntimeError("boom")
    assert not progress.active()
    assert recorder.events == [
        ("start", ("outer",), None, 0),
        ("start", ("outer", "inner"), 2, 0),
        ("advance", ("outer", "inner"), 2, 1),
        ("advance", ("outer", "inner"), 2, 2),
        ("end", ("outer", "inner"), 2, 2),
        ("advance", ("outer",), None, 3),
        ("end", ("outer",), None, 3),
        ("start", ("failing",), 5, 0),
        ("advance", ("failing",), 5, 1),
        ("end", ("failing",), 5, 1),
    ]


def test_ticking_counts_a_step_when_the_loop_comes_back_for_the_next_item() -> None:
    recorder = Recorder()
    with progress.listening(recorder), progress.phase("training", total=3) as step:
        for index, _ in enumerate(progress.ticking(range(3), step)):
            assert recorder.events[-1][3] == index  # the item being worked on is not counted yet
    assert recorder.ends("training") == [(3, 3)]


def test_throttled_lets_starts_and_ends_through_and_one_advance_per_interval() -> None:
    recorder, now = Recorder(), iter(itertools.count(0, 0.1))  # 0.1 s between events
    with progress.listening(progress.throttled(recorder, 0.5, clock=lambda: next(now))):
        with progress.phase("steps", total=20) as step:
            for _ in range(20):
                step()
    kinds = [event for event, *_ in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and recorder.ends("steps") == [(20, 20)]
    assert 3 <= kinds.count("advance") <= 5  # 20 steps over 2 s, at most one per 0.5 s


def test_relay_puts_phases_from_elsewhere_under_the_open_ones() -> None:
    recorder = Recorder()
    progress.relay("start", (progress.Phase("lost", None, 0, 0.0),))  # nobody listens: dropped, no error
    with progress.listening(recorder), progress.phase("parent"):
        progress.relay("advance", (progress.Phase("child", 10, 4, 1.5),))
    assert recorder.events[1] == ("advance", ("parent", "child"), 10, 4)


# --- the display -------------------------------------------------------------------------------------------------


def test_the_eta_comes_from_cells_alone_not_from_a_long_fine_tune() -> None:
    now = [0.0]
    display = Display(4, enabled=True, tty=False, file=io.StringIO(), clock=lambda: now[0])
    display.step("fine-tune", cell=False)  # 1000 s of fine-tuning: no cell
    now[0] = 1000.0
    assert display.eta() is None and display.cells.format_dict["rate"] == 0.0  # nothing predicted yet: '?'
    display.step("dense", cell=True)
    now[0] = 1001.0
    display.ticked(1, cell=True)
    assert display.eta() == pytest.approx(3.0)  # 3 cells left at 1 s each, not ~3000 s
    assert display.cells.format_dict["rate"] == pytest.approx(1.0)
    display.close()
    clock = CellClock(clock=iter([0.0, 1000.0, 1001.0]).__next__)
    clock.start()
    clock.finish(cell=False)  # what ran was no cell (a fine-tune): not timed
    clock.start()
    clock.finish()
    assert clock.seconds_per_cell() == 1.0 and clock.eta(5) == 5.0


def test_without_cell_times_ray_keeps_tqdms_own_rate() -> None:
    display = Display(10, enabled=True, tty=False, timed=False, file=io.StringIO())
    display.ticked(5, cell=False)  # a unit's cells, as a Ray task returns them
    assert display.cells.n == 5 and display.cells.format_dict["rate"] is None and display.eta() is None
    display.close()


def test_a_log_gets_no_phase_line_and_few_redraws_of_the_cells_bar() -> None:
    log = io.StringIO()
    display = Display(2000, enabled=True, tty=False, file=log)
    display.show("start", (progress.Phase("fine-tune (finetune)", 300, 1, 0.5),))
    for _ in range(2000):
        display.step("a cell", cell=True)
        display.ticked(1, cell=True)
    display.close()
    text = log.getvalue()
    assert "fine-tune" not in text and "2000/2000" in text
    assert text.count("\r") + text.count("\n") < 10


def test_a_terminal_gets_the_running_phase_with_its_count_and_the_names_around_it(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    screen = io.StringIO()
    display = Display(3, enabled=True, tty=True, file=screen)
    phases = (progress.Phase("tiny · synthetic · seed 0", None, 0, 5.0), progress.Phase("scoring l0-gates (head)@0.75",
              None, 0, 2.0), progress.Phase("L0 gate training", 1000, 412, 2.0))
    display.show("advance", phases)
    assert "seed 0 · scoring l0-gates (head)@0.75 · L0 gate training: 412/1000" in screen.getvalue()
    display.show("end", phases)  # the gate training ended: its scoring pass shows again
    last = screen.getvalue().rsplit("\r", 1)[-1].split("\x1b")[0].rstrip()
    assert last == "tiny · synthetic · seed 0 · scoring l0-gates (head)@0.75 [00:02]"
    monkeypatch.setenv("COLUMNS", "60")  # too narrow for every name: the outer ones are cut, the count stays
    display.show("advance", phases)
    assert "\r… · L0 gate training: 412/1000 [00:02<00:02, 206.00it/s]" in screen.getvalue()
    display.close()


def test_no_progress_shows_nothing(capsys, tiny_model_dir) -> None:
    from harness.cli import main

    model = tiny_model_dir("bert")
    argv = ["bench", "--models", str(model), "--plugins", "head-gradient,heads", "--no-baselines",
            "--sparsities", "0.5", "--train-steps", "2", "--calib-examples", "8", "--eval-limit", "16",
            "--latency-batch", "2", "--latency-tokens", "8", "--isolation", "none", "--no-cache"]
    capsys.readouterr()
    assert main([*argv, "--out", str(model.parent / "quiet"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*argv, "--out", str(model.parent / "shown")]) == 0
    err = capsys.readouterr().err  # not a terminal: the cells bar, redrawn rarely, and no phase line
    assert "2/2" in err and "fine-tune (finetune)" not in err and err.count("\r") < 10


# --- a bench run ---------------------------------------------------------------------------------------------------


def bench_phases(tmp_path, model_dir, isolation: str) -> Recorder:
    recorder = Recorder()
    with progress.listening(recorder):
        result = harness.run(models=(str(model_dir),), out=str(tmp_path / isolation), isolation=isolation, **TINY)
    assert (result.rows["status"] == "ok").all(), result.rows["error"].tolist()
    return recorder


def check_bench_phases(recorder: Recorder) -> None:
    unit = "tiny-bert · synthetic · seed 0"
    cell = ["evaluation", "latency timing"]
    same = ["evaluation"]  # a recovered model keeps its pruned shapes: its timing is the unpruned cell's
    assert recorder.starts() == [
        unit, "fine-tune (finetune)", "dense", *cell,
        "scoring head-gradient (head)", "head-gradient/heads@0.5", *cell,
        "head-gradient/heads@0.5 recovered", "recovery (finetune)", *same,
        "scoring l0-gates (head)@0.5", "L0 gate training", "l0-gates/heads@0.5", *cell,
        "l0-gates/heads@0.5 recovered", "recovery (finetune)", *same,
    ]
    assert recorder.ends("fine-tune (finetune)") == [(3, 3)]
    assert recorder.ends("L0 gate training") == [(4, 4)]
    assert recorder.ends("recovery (finetune)") == [(2, 2)] * 2
    assert recorder.ends("evaluation") == [(EVAL_BATCHES, EVAL_BATCHES)] * 5
    assert recorder.ends("latency timing") == [(1, 1)] * 3
    gates = next(names for event, names, _, _ in recorder.events if names[-1] == "L0 gate training")
    assert gates == (unit, "scoring l0-gates (head)@0.5", "L0 gate training")


def test_a_bench_run_announces_its_phases_in_order_with_their_counts(tmp_path, tiny_model_dir) -> None:
    check_bench_phases(bench_phases(tmp_path, tiny_model_dir("bert"), "none"))


def test_phases_of_a_unit_in_a_child_process_reach_the_parent(tmp_path, tiny_model_dir) -> None:
    recorder = bench_phases(tmp_path, tiny_model_dir("bert"), "process")
    check_bench_phases(recorder)  # starts and ends are never throttled away
    training = [done for event, names, _, done in recorder.events if names[-1] == "L0 gate training"]
    assert training == sorted(training) and training[-1] == 4


def chatty(request: ScoreRequest) -> None:
    """A stuck scorer that keeps announcing phases (starts and ends are never throttled): for two minutes at most."""
    import time

    for index in range(2400):
        with progress.phase(f"round {index}"):
            time.sleep(0.05)


class Chatty:
    @hookimpl
    def harness_scorers(self) -> list[Scorer]:
        return [Scorer("chatty", "head", chatty)]


def test_phase_updates_do_not_keep_a_stuck_step_from_timing_out(tmp_path, tiny_model_dir) -> None:
    settings = {**TINY, "plugins": ("chatty", "heads"), "recover": None, "options": (), "train_steps": 0}
    with progress.listening(Recorder()):
        result = harness.run(models=(str(tiny_model_dir("bert")),), out=str(tmp_path / "out"), cell_timeout=20,
                             plugins_objects=[Chatty()], **settings)
    errors = result.rows.set_index("scorer")["error"]
    assert errors["chatty"] == "timed out after 20 s (during scoring chatty)"
