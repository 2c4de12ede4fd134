"""``harness report``: Markdown, self-contained HTML and PNG plots from a leaderboard."""

from __future__ import annotations

import itertools

import pandas as pd
from conftest import REPO

from harness import leaderboard
from harness.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def fake_grid(out) -> pd.DataFrame:
    """Two methods × three sparsities × three seeds plus dense, with known means."""
    rows = []
    for seed in (0, 1, 2):
        rows.append({"run_id": f"d{seed}", "model": "m", "task": "t", "adapter": "finetune", "scorer": "none",
                     "pruner": "none", "sparsity": 0.0, "seed": seed, "metric": "accuracy",
                     "score": 0.9 + 0.01 * (seed - 1), "speedup": 1.0, "status": "ok"})
    for (scorer, base), sparsity, seed in itertools.product([("good", 0.85), ("random", 0.7)], (0.25, 0.5, 0.75),
                                                            (0, 1, 2)):
        rows.append({"run_id": f"{scorer}{sparsity}{seed}", "model": "m", "task": "t", "adapter": "finetune",
                     "scorer": scorer, "pruner": "heads", "sparsity": sparsity, "seed": seed, "metric": "accuracy",
                     "score": base - sparsity / 10 + 0.02 * seed, "speedup": 1 + sparsity, "status": "ok"})
    rows.append({**rows[-1], "run_id": "broken", "seed": 9, "status": "error", "score": None})
    leaderboard.append(out / "leaderboard.csv", rows)
    return pd.DataFrame(rows)


def test_aggregate_over_seeds(tmp_path):
    fake_grid(tmp_path)
    table = leaderboard.aggregate(leaderboard.read(tmp_path / "leaderboard.csv"))
    good = table[(table["scorer"] == "good") & (table["sparsity"] == 0.5)].iloc[0]
    assert good["seeds"] == 3 and abs(good["score_mean"] - (0.85 - 0.05 + 0.02)) < 1e-9
    assert abs(good["score_sd"] - 0.02) < 1e-9  # sample sd of (0, .02, .04)
    assert abs(good["dense_mean"] - 0.9) < 1e-9 and abs(good["dense_sd"] - 0.01) < 1e-9
    assert len(table) == 1 + 2 * 3  # the error row counts nowhere


def test_report_writes_markdown_html_and_plots(tmp_path, capsys):
    fake_grid(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    folder = tmp_path / "report"
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == ["m-t-finetune-sparsity.png", "m-t-finetune-speedup.png"]
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 10_000 for p in pngs)
    md = (folder / "report.md").read_text()
    assert "![m-t-finetune-sparsity](m-t-finetune-sparsity.png)" in md and "| good | heads |  |  | one-shot | 0.5 |" in md
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table" in page  # self-contained
    assert "2 plots" in capsys.readouterr().out


def test_report_on_a_real_leaderboard(tmp_path):
    source = REPO / "leaderboards" / "minilm-sst2-heads.csv"
    (tmp_path / "leaderboard.csv").write_text(source.read_text())
    assert main(["report", str(tmp_path), "--to", str(tmp_path / "r")]) == 0
    assert len(list((tmp_path / "r").glob("*.png"))) == 2


def test_every_curve_of_a_21_method_plot_has_its_own_style(tmp_path, monkeypatch):
    """Ten colours cycle: past ten methods the marker and line style tell curves apart, the same in both plots."""
    import matplotlib.pyplot as plt

    from harness import report

    rows = [{"scorer": "none", "pruner": "none", "sparsity": 0.0, "score_mean": 0.9, "score_sd": 0.01,
             "speedup_mean": 1.0, "speedup_sd": 0.0, "metric": "accuracy"}]
    for i, sparsity in itertools.product(range(21), (0.25, 0.5)):
        rows.append({"scorer": f"s{i:02d}", "pruner": "p", "sparsity": sparsity, "score_mean": 0.8 - i / 100,
                     "score_sd": 0.01, "speedup_mean": 1 + sparsity, "speedup_sd": 0.0, "metric": "accuracy"})
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    report.plot_sparsity(pd.DataFrame(rows), tmp_path / "a.png", "t")
    report.plot_speedup(pd.DataFrame(rows), tmp_path / "b.png", "t")
    seen = []
    for figure in figures:
        ax = figure.axes[0]
        curves = {c.get_label(): c.lines[0] for c in ax.containers if c.get_label() != "dense"}
        assert len(curves) == 21
        seen.append({k: (line.get_color(), line.get_marker(), line.get_linestyle()) for k, line in curves.items()})
        assert len(set(seen[-1].values())) == 21
        assert list(figure.get_size_inches()) == [11, 5]  # the 22-entry legend sits beside the axes
    assert seen[0] == seen[1]
    styles = report.method_styles([f"m{i}" for i in range(70)])
    assert len({tuple(s.values()) for s in styles.values()}) == 70


def test_report_without_a_leaderboard_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_recovered_rows_and_options_get_their_own_curve_and_perplexity_reads_lower_is_better():
    from harness.report import _axis_label, _method

    frame = pd.DataFrame({"scorer": ["taylor", "taylor", "taylor"], "pruner": ["heads"] * 3,
                          "options": ["", "", "heads.scope=global"], "recovery": ["", "lora", ""],
                          "metric": ["perplexity"] * 3})
    assert list(_method(frame)) == ["taylor/heads", "taylor/heads + recovery lora", "taylor/heads heads.scope=global"]
    assert _axis_label(frame) == "perplexity (lower is better)"
    assert _axis_label(frame.assign(metric="mcc")) == "mcc"


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
