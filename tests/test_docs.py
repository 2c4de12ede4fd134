"""docs/plugins.md stays in step with the contract (datasette-style).

Every hook is documented with its exact signature and is tested somewhere;
every record of :mod:`harness.records` is documented with all of its fields;
the plugin example in the docs really is a conforming plugin.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
from pathlib import Path

import pytest
from conftest import REPO

from harness import conformance, hookspecs, records
from harness.plugins import ROLE_HOOKS

DOCS = REPO / "docs" / "plugins.md"
TEXT = DOCS.read_text()
HOOKS = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("harness_") and inspect.isfunction(fn)}
RECORDS = {
    name: cls
    for name, cls in vars(records).items()
    if inspect.isclass(cls) and dataclasses.is_dataclass(cls) and cls.__module__ == records.__name__
}


def signature_line(name: str) -> str:
    """``def NAME(...) -> T`` as spelled in hookspecs.py (annotations are strings there)."""
    return f"def {name}{inspect.signature(HOOKS[name])}".replace("'", "")


def section(heading: str) -> str:
    """The docs from a ``### `heading``` (or ``####``) line to the next heading."""
    match = re.search(rf"^#{{3,4}} `{re.escape(heading)}`\n(.*?)(?=^#{{2,4}} |\Z)", TEXT, re.S | re.M)
    assert match, f"docs/plugins.md has no '### `{heading}`' section"
    return match.group(1)


def test_hooks_are_discovered() -> None:
    assert set(HOOKS) == set(ROLE_HOOKS.values())


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_with_its_signature(name: str) -> None:
    assert signature_line(name) in section(name), f"document {signature_line(name)!r} under '### `{name}`'"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_tested(name: str) -> None:
    """Named in a test, or exercised for its role by the conformance suite over every registered plugin."""
    tests = [p for p in (REPO / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    if any(name in p.read_text() for p in tests):
        return
    suite = REPO / "tests" / "test_conformance.py"
    assert suite.exists() and "conformance.registered()" in suite.read_text(), f"no test mentions {name}"
    role = next(role for role, hook in ROLE_HOOKS.items() if hook == name)
    assert any(item.role == role for item in conformance.registered()), f"no installed plugin implements {name}"


def test_records_are_discovered() -> None:
    role_records = set(records.ROLE_RECORDS.values())
    assert role_records <= set(RECORDS.values())
    requests = {name for name in RECORDS if name.endswith(("Request", "Result"))}
    assert {"ScoreRequest", "PruneRequest", "TrainRequest", "TrainResult", "TaskRequest"} <= requests


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_record_is_documented_with_its_fields(name: str) -> None:
    text = section(name)
    missing = [f.name for f in dataclasses.fields(RECORDS[name]) if f"`{f.name}`" not in text]
    assert not missing, f"document fields {missing} of {name}"


def test_entry_point_group_and_conformance_api_are_documented() -> None:
    assert "[project.entry-points.harness]" in TEXT
    for api in ("conformance.check_plugin(", "conformance.registered(", "-o PLUGIN.KEY=VALUE"):
        assert api in TEXT
    assert all(hasattr(conformance, n) for n in ("check_plugin", "registered", "item_id"))
    assert "examples/harness-entropy-scorer" in TEXT


def test_plugin_example_in_docs_conforms() -> None:
    code = re.search(r"```python\n(# my_scorer\.py\n.*?)```", TEXT, re.S)
    assert code, "docs/plugins.md lost its example plugin"
    module = types.ModuleType("my_scorer")
    exec(compile(code.group(1), str(DOCS), "exec"), module.__dict__)
    (scorer,) = module.harness_scorers()
    conformance.check_plugin(scorer)
