"""Typed plugin options: declared once as a frozen dataclass; ``-o``, ``harness list --options`` and plugins read it.

Legacy dict options (plus the record's ``choices`` and ``ranges``) keep working:
both are parsed and checked from :func:`harness.options.describe`, and run ids
(``options_label``) do not change.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pytest
from conftest import REPO, error_of

from harness import Options, Scorer, ScoreRequest, hookimpl, option, provenance
from harness.cli import main
from harness.options import OptionSpec, describe, resolve
from harness.plugins import load_registry, options_for, options_label, parse_options

SEEN: list[Any] = []  # what the probes' functions were given, in order


@dataclass(frozen=True)
class ProbeOptions(Options):
    """A third-party scorer's typed options."""

    boost: float = option(1.0, low=0.0, high=10.0, help="multiplies every score")
    mode: Literal["flat", "ramp"] = option("flat", help="shape of the scores")
    layers: int = option(2, low=1)
    verbose: bool = False


@dataclass(frozen=True)
class CutOptions(Options):
    """Options with a check across fields, which must also run before any work."""

    low_cut: int = option(1, low=0)
    high_cut: int = option(3, low=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low_cut > self.high_cut:
            raise ValueError(f"low_cut {self.low_cut} is above high_cut {self.high_cut}")


def _scores(request: ScoreRequest, ramp: bool, boost: float) -> Any:
    import torch

    from harness import surgery

    geometry = surgery.head_geometry(request.model)
    shape = (geometry.num_layers, max(geometry.heads_per_layer))
    values = torch.arange(shape[0] * shape[1], dtype=torch.float32).view(shape) if ramp else torch.ones(shape)
    return values * boost


def typed_score(request: ScoreRequest) -> Any:
    """Reads attributes: the harness passes the typed instance with the overrides applied."""
    SEEN.append(request.options)
    return _scores(request, request.options.mode == "ramp", request.options.boost)


def legacy_score(request: ScoreRequest) -> Any:
    """Written for dict options: item access and ``get`` with a repeated default."""
    SEEN.append(dict(request.options))
    return _scores(request, request.options.get("label", "x") == "y", float(request.options["power"]))


def cut_score(request: ScoreRequest) -> Any:
    return _scores(request, False, 1.0)


class ThirdParty:
    """Plugins registered directly: one typed, one legacy, one with a check across fields."""

    @hookimpl
    def harness_scorers(self) -> list[Scorer]:
        return [
            Scorer("typed-probe", "head", typed_score, "typed options", ProbeOptions()),
            Scorer("legacy-probe", "head", legacy_score, "dict options", {"power": 2, "label": "x", "scale": 0.5},
                   choices={"label": ("x", "y")}, ranges={"power": (1, 4)}),
            Scorer("cut-probe", "head", cut_score, "checked across fields", CutOptions()),
        ]


@pytest.fixture
def no_work(monkeypatch, tmp_path: Path):
    """Bad options must stop the run while planning: reaching the output is a failure."""
    monkeypatch.chdir(tmp_path)

    def started(*args, **kwargs):
        raise AssertionError("the plan was accepted and work started")

    monkeypatch.setattr(provenance, "record", started)


# --------------------------------------------------------------------------- the Options class


def test_options_are_a_frozen_read_only_mapping() -> None:
    options = ProbeOptions(boost=2.5)
    assert (options.boost, options["boost"], options.get("mode"), options.get("nope", 7)) == (2.5, 2.5, "flat", 7)
    assert list(options) == ["boost", "mode", "layers", "verbose"] and len(options) == 4
    assert "layers" in options and "nope" not in options
    assert dict(options) == {"boost": 2.5, "mode": "flat", "layers": 2, "verbose": False}
    assert {**options, "layers": 5}["layers"] == 5
    with pytest.raises(KeyError):
        options["nope"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.boost = 3.0  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(options))
    assert again == options and hash(again) == hash(options) and again is not options


def test_values_are_checked_when_created_so_a_bad_default_fails_with_the_record() -> None:
    with pytest.raises(ValueError, match=r"^ProbeOptions: boost is above its maximum 10, not 11\.0$"):
        Scorer("x", "head", typed_score, options=ProbeOptions(boost=11.0))
    with pytest.raises(ValueError, match=r"^ProbeOptions: mode must be 'flat' or 'ramp', not 'zigzag'$"):
        ProbeOptions(mode="zigzag")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^ProbeOptions: layers must be an int, not '2'$"):
        ProbeOptions(layers="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^ProbeOptions: verbose must be a bool, not 1$"):
        ProbeOptions(verbose=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^ProbeOptions: layers is below its minimum 1, not 0$"):
        ProbeOptions(layers=0)
    with pytest.raises(ValueError, match="low_cut 4 is above high_cut 3"):
        CutOptions(low_cut=4)
    widened = ProbeOptions(boost=2)
    assert widened.boost == 2.0 and type(widened.boost) is float


def test_declarations_the_harness_cannot_parse_are_type_errors() -> None:
    @dataclass(frozen=True)
    class Complex(Options):
        z: complex = 1j

    @dataclass(frozen=True)
    class Shadowing(Options):
        keys: int = 1

    @dataclass(frozen=True)
    class NoDefault(Options):
        x: int

    with pytest.raises(TypeError, match="Complex.z: an option is a bool, int, float, str or Literal of strings"):
        Complex()
    with pytest.raises(TypeError, match="Shadowing.keys: not usable as an option name"):
        Shadowing()
    with pytest.raises(TypeError, match="NoDefault.x: an option needs a default"):
        NoDefault(x=1)


def test_of_completes_a_partial_dict_and_keeps_an_instance() -> None:
    assert ProbeOptions.of({"mode": "ramp"}) == ProbeOptions(mode="ramp")
    typed = ProbeOptions(layers=4)
    assert ProbeOptions.of(typed) is typed
    assert ProbeOptions.of({}, defaults=typed).layers == 4
    with pytest.raises(ValueError, match=r"unknown option 'nope' \(options: boost, mode, layers, verbose\)"):
        ProbeOptions.of({"nope": 1})
    with pytest.raises(ValueError, match="mode must be 'flat' or 'ramp'"):
        ProbeOptions.of({"mode": "zigzag"})


def test_describe_and_resolve_treat_typed_and_legacy_records_alike() -> None:
    typed, legacy, _ = ThirdParty().harness_scorers()
    assert describe(typed) == [
        OptionSpec("boost", "float", 1.0, (), 0.0, 10.0, "multiplies every score"),
        OptionSpec("mode", "str", "flat", ("flat", "ramp"), None, None, "shape of the scores"),
        OptionSpec("layers", "int", 2, (), 1, None, ""),
        OptionSpec("verbose", "bool", False),
    ]
    assert describe(legacy) == [
        OptionSpec("power", "int", 2, (), 1, 4),
        OptionSpec("label", "str", "x", ("x", "y")),
        OptionSpec("scale", "float", 0.5),
    ]
    own = dataclasses.replace(typed, options=ProbeOptions(boost=3.0))
    assert describe(own)[0].default == 3.0  # the record's instance, not the class, holds the defaults
    assert resolve(typed, {"boost": 4.0}) == ProbeOptions(boost=4.0) and typed.options == ProbeOptions()
    assert resolve(typed, {}) is typed.options
    assert resolve(legacy, {"power": 3}) == {"power": 3, "label": "x", "scale": 0.5}


def test_every_builtin_with_options_declares_them_typed_and_they_pickle() -> None:
    typed = 0
    for item in load_registry():
        options = getattr(item.record, "options", {})
        if not len(options):
            continue
        assert isinstance(options, Options), item.record.name
        assert not item.record.choices and not item.record.ranges, item.record.name
        assert pickle.loads(pickle.dumps(options)) == options
        typed += 1
    assert typed >= 15  # heads, neurons, lora x3, finetune, l0-gates, the glue tasks, ...


def test_importing_the_options_module_stays_free_of_torch() -> None:
    code = "import sys, harness, harness.options; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_typed_example_in_the_docs_declares_and_parses(monkeypatch) -> None:
    text = (REPO / "docs" / "plugins.md").read_text()
    code = re.search(r"```python\n(# typed_options\.py\n.*?)```", text, re.S)
    assert code, "docs/plugins.md lost its typed options example"
    module = types.ModuleType("typed_options")
    monkeypatch.setitem(sys.modules, "typed_options", module)  # as an installed plugin module would be
    exec(compile(code.group(1), "docs/plugins.md", "exec", dont_inherit=True), module.__dict__)
    (record,) = module.harness_scorers()
    assert [(s.name, s.type, s.default, s.choices, s.low, s.high) for s in describe(record)] == [
        ("normalize", "bool", True, (), None, None),
        ("max_batches", "int", 0, (), 0, None),
        ("reduce", "str", "mean", ("mean", "max"), None, None),
        ("temperature", "float", 1.0, (), 1e-12, 10.0),
    ]
    registry = load_registry([module])
    overrides = parse_options(["focus.reduce=max", "focus.temperature=2"], registry)
    assert options_for(registry.get("scorer", "focus"), overrides) == module.FocusOptions(reduce="max", temperature=2.0)
    with pytest.raises(ValueError, match=r"^FocusOptions: temperature is above its maximum 10, not 20\.0$"):
        module.FocusOptions(temperature=20.0)


# --------------------------------------------------------------------------- -o parsing and errors


def test_typed_and_legacy_options_parse_to_the_declared_types() -> None:
    registry = load_registry([ThirdParty()])
    pairs = ["typed-probe.boost=2.5", "typed-probe.mode=ramp", "typed-probe.verbose=yes", "typed-probe.layers=3",
             "legacy-probe.power=3", "legacy-probe.label=y"]
    overrides = parse_options(pairs, registry)
    assert overrides == {"typed-probe": {"boost": 2.5, "mode": "ramp", "verbose": True, "layers": 3},
                         "legacy-probe": {"power": 3, "label": "y"}}
    assert type(overrides["typed-probe"]["layers"]) is int
    typed = options_for(registry.get("scorer", "typed-probe"), overrides)
    assert typed == ProbeOptions(boost=2.5, mode="ramp", layers=3, verbose=True)
    legacy = options_for(registry.get("scorer", "legacy-probe"), overrides)
    assert legacy == {"power": 3, "label": "y", "scale": 0.5} and type(legacy) is dict


@pytest.mark.parametrize(
    "pair, expected",
    [
        ("typed-probe.nope=1", "plugin 'typed-probe' has no option 'nope' (options: boost, layers, mode, verbose)"),
        ("typed-probe.layers=two", "option typed-probe.layers takes a int, not 'two'"),
        ("typed-probe.boost=lots", "option typed-probe.boost takes a float, not 'lots'"),
        ("typed-probe.verbose=perhaps", "option typed-probe.verbose takes true or false, not 'perhaps'"),
        ("typed-probe.mode=zigzag", "option typed-probe.mode takes one of flat, ramp, not 'zigzag'"),
        ("typed-probe.boost=11", "option typed-probe.boost=11 is above its maximum 10"),
        ("typed-probe.layers=0", "option typed-probe.layers=0 is below its minimum 1"),
        ("typed-probe.boost=nan", "option typed-probe.boost=nan is not a finite number"),
        ("cut-probe.low_cut=5", "options of cut-probe: low_cut 5 is above high_cut 3"),
        ("legacy-probe.nope=1", "plugin 'legacy-probe' has no option 'nope' (options: label, power, scale)"),
        ("legacy-probe.power=9", "option legacy-probe.power=9 is above its maximum 4"),
        ("legacy-probe.label=z", "option legacy-probe.label takes one of x, y, not 'z'"),
        ("heads.gqa=pairs", "option heads.gqa takes one of groups, query, not 'pairs'"),
        ("lora.targets=everything", "option lora.targets takes one of qv, qkv, qkvo, ffn, all, not 'everything'"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_work(capsys, no_work, pair: str, expected: str) -> None:
    line = error_of(capsys, ["bench", "-o", pair], extra=(ThirdParty(),))
    assert line == f"harness: error: {expected}"


def test_options_label_is_what_it_was() -> None:
    """Labels feed run ids and cache keys: typed options must not change them."""
    registry = load_registry([ThirdParty()])
    pairs = ["heads.scope=layer", "heads.min_heads_per_layer=2", "l0-gates.temperature=0.5", "lora.alpha=16",
             "finetune.warmup_ratio=0", "head-gradient.normalize=false", "synthetic.data_seed=7", "sst2.max_length=32",
             "typed-probe.boost=3", "legacy-probe.power=3", "legacy-probe.label=y"]
    overrides = parse_options(pairs, registry)
    labels = {name: options_label(registry.get(role, name), overrides) for role, name in [
        ("pruner", "heads"), ("scorer", "l0-gates"), ("adapter", "lora"), ("adapter", "finetune"),
        ("scorer", "head-gradient"), ("task", "synthetic"), ("task", "sst2"), ("scorer", "typed-probe"),
        ("scorer", "legacy-probe"), ("scorer", "random"), ("adapter", "dora")]}
    assert labels == {
        "heads": 'heads{"min_heads_per_layer":2,"scope":"layer"}',
        "l0-gates": 'l0-gates{"temperature":0.5}',
        "lora": 'lora{"alpha":16}',
        "finetune": 'finetune{"warmup_ratio":0.0}',
        "head-gradient": 'head-gradient{"normalize":false}',
        "synthetic": 'synthetic{"data_seed":7}',
        "sst2": 'sst2{"max_length":32}',
        "typed-probe": 'typed-probe{"boost":3.0}',
        "legacy-probe": 'legacy-probe{"label":"y","power":3}',
        "random": "",
        "dora": "",
    }


# --------------------------------------------------------------------------- end to end


def test_plugins_get_their_options_in_a_bench_run(capsys, tiny_model_dir, tmp_path: Path) -> None:
    SEEN.clear()
    out = tmp_path / "out"
    argv = ["bench", "--models", str(tiny_model_dir("bert")), "--plugins", "typed-probe,legacy-probe,heads",
            "--no-baselines", "--sparsities", "0.25", "--train-steps", "2", "--calib-examples", "8",
            "--latency-batch", "1", "--latency-tokens", "8", "--eval-limit", "16", "--no-progress",
            "--isolation", "none", "--out", str(out),
            "-o", "typed-probe.boost=2.5", "-o", "typed-probe.mode=ramp", "-o", "legacy-probe.power=3"]
    assert main(argv, extra=[ThirdParty()]) == 0, capsys.readouterr().err
    typed = [seen for seen in SEEN if isinstance(seen, ProbeOptions)]
    assert typed == [ProbeOptions(boost=2.5, mode="ramp")]
    assert [seen for seen in SEEN if isinstance(seen, dict)] == [{"power": 3, "label": "x", "scale": 0.5}]
    frame = pd.read_csv(out / "leaderboard.csv")
    pruned = frame[frame["sparsity"] > 0].set_index("scorer")
    assert pruned.loc["typed-probe", "options"] == 'typed-probe{"boost":2.5,"mode":"ramp"}'
    assert pruned.loc["legacy-probe", "options"] == 'legacy-probe{"power":3}'


# --------------------------------------------------------------------------- harness list --options


def test_list_options_shows_each_plugins_options(capsys) -> None:
    assert main(["list", "--options"], extra=[ThirdParty()]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("scorer") and " typed-probe " in line)
    assert lines[start + 1 : start + 5] == [
        "    boost    float  1.0    [0, 10]    multiplies every score",
        "    mode     str    flat   flat|ramp  shape of the scores",
        "    layers   int    2      >= 1",
        "    verbose  bool   false  -",
    ]
    start = next(i for i, line in enumerate(lines) if line.startswith("scorer") and " legacy-probe " in line)
    assert lines[start + 1 : start + 4] == [
        "    power  int    2    [1, 4]",
        "    label  str    x    x|y",
        "    scale  float  0.5  -",
    ]
    start = next(i for i, line in enumerate(lines) if line.startswith("pruner") and " heads " in line)
    assert lines[start + 2] == "    min_heads_per_layer  int  1       >= 1          heads every layer keeps"
    gradient = next(i for i, line in enumerate(lines) if line.startswith("scorer") and " gradient " in line)
    assert lines[gradient + 1].startswith("scorer")  # a plugin without options has no option lines


def test_plain_list_shows_no_options(capsys) -> None:
    assert main(["list"], extra=[ThirdParty()]) == 0
    out = capsys.readouterr().out
    assert "multiplies every score" not in out and "min_heads_per_layer" not in out
    assert all(not line.startswith("    ") for line in out.splitlines())
