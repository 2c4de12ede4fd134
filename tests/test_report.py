"""``harness report``: Markdown, a self-contained interactive HTML page, PNG plots faceted by granularity."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from harness import leaderboard, report, report_plots
from harness.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
# (scorer, pruner, granularity, score at 0 sparsity, speedup per unit of sparsity)
METHODS = (
    ("head-gradient", "heads", "head", 0.86, 0.8), ("l0-gates", "heads", "head", 0.85, 0.8),
    ("random", "heads", "head", 0.84, 0.8), ("taylor-neuron", "neurons", "neuron", 0.87, 1.2),
    ("random-neuron", "neurons", "neuron", 0.83, 1.2), ("magnitude", "unstructured", "weight", 0.88, 0.0),
    ("magnitude", "heads", "head", 0.80, 0.8), ("none", "random-unstructured", "weight", 0.7, 0.0),
    ("block-influence", "layers", "layer", 0.8, 2.0), ("random-layer", "layers", "layer", 0.6, 2.0),
)


def synthetic_grid(out: Path, chance: float | None = 0.5, sparsities=(0.25, 0.5, 0.75)) -> Path:
    """A leaderboard with heads, neurons, weights and layers, two seeds (one method one seed), a flag, chance."""
    rows = []
    base = {"model": "m", "task": "t", "adapter": "finetune", "metric": "accuracy", "status": "ok",
            "chance": chance, "params": 22_713_986, "gflops": 91.8}
    for seed in (0, 1):
        rows.append({**base, "run_id": f"d{seed}", "scorer": "none", "pruner": "none", "granularity": "none",
                     "sparsity": 0.0, "seed": seed, "score": 0.9 + 0.01 * seed, "speedup": 1.0})
    for (scorer, pruner, granularity, start, fast), sparsity, seed in itertools.product(METHODS, sparsities, (0, 1)):
        if scorer == "l0-gates" and seed == 1:
            continue  # one seed: its sd is empty, never nan
        rows.append({**base, "run_id": f"{scorer}-{pruner}-{sparsity}-{seed}", "scorer": scorer, "pruner": pruner,
                     "granularity": granularity, "sparsity": sparsity, "achieved_sparsity": sparsity, "seed": seed,
                     "score": start - sparsity / 5 + 0.01 * seed, "speedup": 1 + fast * sparsity + 0.01 * seed,
                     "params": int(22_713_986 * (1 - sparsity / 3)), "schedule": "one-shot",
                     "flags": "constant-predictions" if (scorer, sparsity) == ("random-layer", 0.75) else ""})
    leaderboard.append(out / "leaderboard.csv", rows)
    return out / "leaderboard.csv"


def prepared(out: Path, **grid) -> pd.DataFrame:
    return report.prepare(leaderboard.aggregate(leaderboard.read(synthetic_grid(out, **grid))))


def figure(table: pd.DataFrame, kind: str):
    """The matplotlib figure a report draws for this one-(model, task, adapter, metric) table."""
    view = report_plots.plan(report_plots.with_front(table), kind, report_plots.method_styles(table))
    return view, report_plots.draw(view, "t")


@pytest.fixture
def close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def test_aggregate_over_seeds(tmp_path):
    table = leaderboard.aggregate(leaderboard.read(synthetic_grid(tmp_path)))
    head = table[(table["scorer"] == "head-gradient") & (table["sparsity"] == 0.5)].iloc[0]
    assert head["seeds"] == 2 and head["score_mean"] == pytest.approx(0.86 - 0.1 + 0.005)
    assert head["score_sd"] == pytest.approx(0.01 / math.sqrt(2))
    assert head["dense_mean"] == pytest.approx(0.905) and head["chance"] == 0.5
    assert len(table) == 1 + len(METHODS) * 3


def test_facets_follow_the_granularities_and_dense_is_in_each(tmp_path, close_figures):
    table = prepared(tmp_path)
    for kind in ("sparsity", "speedup"):
        view, fig = figure(table, kind)
        assert [f.key for f in view.facets] == ["head", "neuron", "weight", "layer"]
        assert [ax.get_title() for ax in fig.axes] == ["heads", "neurons", "weights", "layers"]
        for ax, facet in zip(fig.axes, view.facets):
            dense = [line for line in ax.lines if line.get_label() == "dense"]
            assert len(dense) == 1 and list(dense[0].get_ydata()) == [pytest.approx(0.905)] * 2
            curves = {c.get_label() for c in ax.containers}
            assert curves == {s.method for s in facet.series} and curves
        weights = {c.get_label() for c in fig.axes[2].containers}
        assert weights == {"magnitude/unstructured", "none/random-unstructured"}


def test_colours_one_per_scorer_distinct_and_stable_for_21_methods(tmp_path, close_figures):
    rows = [{"scorer": "none", "pruner": "none", "method": "dense"}]
    scorers = [f"scorer{i:02d}" for i in range(21)]
    pruners = ["heads", "neurons", "unstructured"]
    rows += [{"scorer": s, "pruner": pruners[i % 3], "method": f"{s}/{pruners[i % 3]}"} for i, s in enumerate(scorers)]
    rows += [{"scorer": "scorer00", "pruner": "neurons", "method": "scorer00/neurons"}]
    styles = report_plots.method_styles(pd.DataFrame(rows))
    colours = {styles[f"{s}/{pruners[i % 3]}"].color for i, s in enumerate(scorers)}
    assert len(colours) == 21 and not any(_grey(c) for c in colours)
    assert styles["scorer00/neurons"].color == styles["scorer00/heads"].color  # one colour per scorer
    assert styles["scorer00/neurons"].dash != styles["scorer00/heads"].dash  # one line style per pruner
    assert len({(s.color, s.dash, s.marker, s.fill) for s in styles.values()}) == len(styles) == 22
    # the same scorer keeps its colour across facets and across both figures of a real report
    view, fig = figure(prepared(tmp_path), "sparsity")
    _, fig2 = figure(prepared(tmp_path / "again"), "speedup")
    seen = {}
    for ax in [*fig.axes, *fig2.axes]:
        for container in ax.containers:
            seen.setdefault(container.get_label(), set()).add(container.lines[0].get_color())
    assert all(len(c) == 1 for c in seen.values())
    assert seen["magnitude/heads"] == seen["magnitude/unstructured"]  # heads facet and weights facet
    assert len(report_plots.PALETTE) >= 25 and len({report_plots.colour(i) for i in range(60)}) == 60


def _grey(colour: str) -> bool:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return r == g == b


def test_random_baselines_are_grey(tmp_path):
    styles = report_plots.method_styles(prepared(tmp_path))
    randoms = ["random/heads", "random-neuron/neurons", "random-layer/layers", "none/random-unstructured"]
    assert all(_grey(styles[m].color) and styles[m].random for m in randoms)
    assert not any(_grey(s.color) for m, s in styles.items() if m not in randoms)
    assert report_plots.is_random("random-weight", "unstructured") and not report_plots.is_random("none", "sparsegpt")


def test_chance_line_drawn_when_known_and_not_otherwise(tmp_path, close_figures):
    _, fig = figure(prepared(tmp_path / "a", chance=0.509), "sparsity")
    for ax in fig.axes:
        chance = [line for line in ax.lines if line.get_label() == "chance"]
        assert len(chance) == 1 and list(chance[0].get_ydata()) == [0.509, 0.509]
        assert chance[0].get_color() == "red" and chance[0].get_linestyle() == ":"
    _, fig = figure(prepared(tmp_path / "b", chance=None), "sparsity")
    assert not [line for ax in fig.axes for line in ax.lines if line.get_label() == "chance"]


def test_pareto_frontier_on_a_hand_example():
    speedup = [1.0, 1.2, 1.1, 1.5, 1.4, 1.5, float("nan")]
    score = [0.90, 0.85, 0.80, 0.60, 0.50, 0.60, 0.99]
    # (1.1, .80) is beaten by (1.2, .85); (1.4, .50) by (1.5, .60); the two (1.5, .60) tie and both stay
    assert report_plots.pareto_front(speedup, score) == [True, True, False, True, False, True, False]
    perplexity = [20.0, 30.0, 25.0, 100.0]
    assert report_plots.pareto_front([1.0, 1.2, 1.3, 1.1], perplexity, lower=True) == [True, False, True, False]


def test_the_speedup_view_marks_the_frontier(tmp_path, close_figures):
    table = report_plots.with_front(prepared(tmp_path))
    view, fig = figure(table, "speedup")
    front = table[table["pareto"]].sort_values("speedup_mean")
    assert view.front == list(zip(front["speedup_mean"], front["score_mean"]))
    assert ("dense" in set(front["method"])) and len(front) >= 3
    layers = fig.axes[3]
    step = [line for line in layers.lines if line.get_label() == "Pareto frontier"]
    assert len(step) == 1 and step[0].get_drawstyle() == "steps-pre"
    rings = [c for c in layers.collections if c.get_label() == "on the frontier"]
    expected = {(round(x, 6), round(y, 6)) for s in view.facets[3].series for x, y, f in zip(s.x, s.y, s.front) if f}
    assert expected and {tuple(p) for p in rings[0].get_offsets().round(6)} >= expected


def test_a_single_sparsity_gets_sensible_limits_and_curves_are_dodged(tmp_path, close_figures):
    view, fig = figure(prepared(tmp_path, sparsities=(0.5,)), "sparsity")
    for ax in fig.axes:
        assert ax.get_xlim() == pytest.approx((0.4, 0.6)) and list(ax.get_xticks()) == [0.5]
    assert report_plots.sparsity_axis([0.1, 0.5, 0.9])[0] == pytest.approx((0.0, 1.0))
    assert report_plots.sparsity_axis([0.1, 0.25, 0.5, 0.75, 0.9]) == (pytest.approx((0.036, 0.964)),
                                                                       [0.1, 0.25, 0.5, 0.75, 0.9])
    xs = [s.x[0] for s in view.facets[0].series]  # four head methods at sparsity 0.5, side by side
    assert len(set(xs)) == 4 and all(abs(x - 0.5) <= 0.015 + 1e-9 for x in xs)
    offsets = report_plots.dodge(["a", "b", "c"], [0.25, 0.5])
    assert offsets == pytest.approx({"a": -0.0375, "b": 0.0, "c": 0.0375})


def test_wide_perplexities_are_read_on_a_log_axis(tmp_path, close_figures):
    rows = [{"run_id": f"r{i}", "model": "m", "task": "t", "adapter": "finetune", "metric": "perplexity",
             "scorer": s, "pruner": p, "granularity": g, "sparsity": sp, "seed": 0, "score": v, "speedup": 1.0,
             "status": "ok"} for i, (s, p, g, sp, v) in enumerate(
        [("none", "none", "none", 0.0, 30.0), ("wanda", "unstructured", "weight", 0.5, 55.0),
         ("random-weight", "unstructured", "weight", 0.5, 6e7)])]
    leaderboard.append(tmp_path / "leaderboard.csv", rows)
    table = report.prepare(leaderboard.aggregate(leaderboard.read(tmp_path / "leaderboard.csv")))
    view, fig = figure(table, "speedup")
    assert view.ylog and fig.axes[0].get_yscale() == "log" and "lower is better" in fig.axes[0].get_ylabel()
    assert report_plots.with_front(table).set_index("method")["pareto"].to_dict() == {"dense": True, "wanda/unstructured": False,
                                                               "random-weight/unstructured": False}


def test_numbers_read_as_numbers():
    assert report.number(float("nan")) == "" and report.number(None) == "" and report.number(0.879234) == "0.8792"
    assert report.number(30.0325) == "30.03" and report.number(0.00237, 2) == "0.0024"
    assert [report.count(v) for v in (22_713_986, 21_998_000, 134_515_008, 1.5e9, 950, float("nan"))] == \
        ["22.7M", "22.0M", "135M", "1.50B", "950", ""]
    assert report.speedup(1.2345) == "1.23x" and report.speedup(float("nan")) == ""


def test_tables_label_dense_name_flags_and_leave_a_one_seed_sd_empty(tmp_path):
    table = report_plots.with_front(prepared(tmp_path))
    table = table.assign(_d=~report_plots.is_dense(table)).sort_values(["_d", "sparsity", "method"])
    shown, keys = report.table(table)
    assert list(shown.columns) == ["method", "granularity", "sparsity", "achieved", "score", "sd", "seeds", "speedup",
                                   "params", "GFLOPs", "Pareto", "flags"]
    dense = shown.iloc[0]
    assert dense["method"] == "dense" and dense["granularity"] == "" and dense["params"] == "22.7M"
    assert dense["speedup"] == "1.00x" and dense["Pareto"] == "✓"
    one_seed = shown[shown["method"] == "l0-gates/heads"].iloc[0]
    assert one_seed["sd"] == "" and one_seed["seeds"] == "1" and keys.loc[one_seed.name, "sd"] == ""
    flagged = shown[shown["flags"] != ""]
    assert list(flagged["method"]) == ["random-layer/layers"] and list(flagged["flags"]) == ["constant-predictions"]
    assert keys.loc[shown["method"] == "dense", "score"].iloc[0] == pytest.approx(0.905)
    md = report.markdown_table(shown)
    assert "nan" not in md and "none | none" not in md and "e+07" not in md
    assert "| dense |  | 0 | " in md


def test_report_writes_markdown_html_and_plots(tmp_path, capsys):
    synthetic_grid(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    folder = tmp_path / "report"
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == ["m-t-finetune-sparsity.png", "m-t-finetune-speedup.png"]
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 10_000 for p in pngs)
    md = (folder / "report.md").read_text()
    assert "![m-t-finetune-sparsity](m-t-finetune-sparsity.png)" in md and "- chance (a constant prediction" in md
    assert "| head-gradient/heads | head | 0.5 | 0.5 | 0.765 | 0.0071 | 2 | 1.40x | 18.9M |" in md
    assert "flagged: 1 of 31 rows (constant-predictions)" in md
    page = (folder / "report.html").read_text()
    assert page.count('<svg class="plot"') == 8 and page.count('class="pt"') == 2 * (len(METHODS) * 3)
    assert page.count('<tr data-method="head-gradient/heads"') == 3 and "<script>" in page
    for remote in ("<script src", "<link rel=\"stylesheet", "src=\"http", "href=\"http", "@import", "url("):
        assert remote not in page  # one file: nothing fetched
    assert "2 plots" in capsys.readouterr().out


def test_report_of_a_published_csv_goes_beside_it_and_regenerates_from_its_grid_file(tmp_path):
    source = REPO / "leaderboards" / "minilm-sst2-heads.csv"
    (tmp_path / "heads.csv").write_text(source.read_text())
    (tmp_path / "heads.toml").write_text("[grid]\nmodels = ['minilm']\n[execution]\nout = 'runs/h'\n")
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "commands.json").write_text('[{"command": "harness bench", "versions": {"torch": "2.13.0"}}]')
    assert main(["report", str(tmp_path / "heads.csv")]) == 0
    md = (tmp_path / "heads" / "report.md").read_text()
    assert f"harness bench --config {tmp_path / 'heads.toml'}\nharness report runs/h\n" in md
    assert "Versions (the run that wrote it): torch 2.13.0." in md
    assert len(list((tmp_path / "heads").glob("*.png"))) == 2
    assert "| dense |  | 0 |  | 0.8792 | 0.0024 | 3 | 1.00x | 22.7M |" in md  # an old CSV: no granularity, no gflops


def test_index_gathers_every_leaderboard_of_a_folder(tmp_path, capsys):
    synthetic_grid(tmp_path / "a")
    (tmp_path / "first.csv").write_text((tmp_path / "a" / "leaderboard.csv").read_text())
    (tmp_path / "second.csv").write_text((REPO / "leaderboards" / "minilm-sst2-heads.csv").read_text())
    (tmp_path / "second-summary.csv").write_text("layer,value\n0,1\n")  # an analysis table, not a leaderboard
    assert main(["report", "--index", str(tmp_path)]) == 0
    page = (tmp_path / "index.html").read_text()
    assert 'href="first/report.html"' in page and 'href="second/report.html"' in page
    assert (tmp_path / "first" / "report.html").exists() and "second-summary" not in page
    first = report.summary(tmp_path / "first.csv", leaderboard.aggregate(leaderboard.read(tmp_path / "first.csv")))
    assert first["methods"] == len(METHODS) and first["seeds"] == 2 and first["sparsities"] == "0.25, 0.5, 0.75"
    assert first["best"][0] == "0.25: magnitude/unstructured 0.835"
    assert str(tmp_path / "index.html") in capsys.readouterr().out


def test_report_input_errors_are_one_line(tmp_path, capsys):
    for argv, message in ((["report", str(tmp_path / "nothing")], "does not exist"),
                          (["report"], "report needs OUT"),
                          (["report", str(tmp_path), "--index", str(tmp_path)], "takes no OUT"),
                          (["report", "--index", str(tmp_path)], "no leaderboard CSV there")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_recovered_rows_and_options_get_their_own_curve_and_perplexity_reads_lower_is_better():
    import colorsys

    from matplotlib.colors import to_rgb

    frame = pd.DataFrame({"scorer": ["taylor", "taylor", "taylor", "none"], "pruner": ["heads"] * 3 + ["none"],
                          "options": ["", "", "heads.scope=global", ""], "recovery": ["", "lora", "", ""],
                          "metric": ["perplexity"] * 4})
    assert list(report_plots.method_labels(frame)) == ["taylor/heads", "taylor/heads + recovery lora",
                                                       "taylor/heads heads.scope=global", "dense"]
    assert report_plots.axis_label(frame) == "perplexity (lower is better)"
    assert report_plots.axis_label(frame.assign(metric="mcc")) == "mcc"
    styles = report_plots.method_styles(frame.assign(method=report_plots.method_labels(frame)))
    assert len({s.color for s in styles.values()}) == len({s.fill for s in styles.values()}) == 3
    hues = {round(colorsys.rgb_to_hsv(*to_rgb(s.color))[0], 2) for s in styles.values()}
    assert len(hues) == 1  # variants of one pair: the scorer's hue, darker or lighter, and their own fill


def test_bench_records_its_command_and_versions_and_the_report_heads_with_them(tiny_model_dir, tmp_path):
    import json

    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--tasks", "synthetic", "--plugins", "random,heads",
            "--sparsities", "0.5", "--train-steps", "2", "--calib-examples", "8", "--eval-limit", "16",
            "--latency-batch", "2", "--latency-tokens", "8", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 0  # resumed: nothing to do, one more line
    entries = json.loads((out / "commands.json").read_text())
    assert len(entries) == 2 and entries[0]["command"] == entries[1]["command"]
    assert entries[0]["command"].startswith("harness bench --models ") and "--sparsities 0.5" in entries[0]["command"]
    import torch

    assert entries[0]["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]  # wheel metadata may drop +cu130
    assert main(["report", str(out)]) == 0
    md = (out / "report" / "report.md").read_text()
    assert md.count(entries[0]["command"]) == 1 and "Versions: python " in md and "transformers " in md
