"""Plugin discovery: a fresh pluggy manager per call, loaded from the ``harness`` entry points.

Built-ins and third-party packages go through the same entry-point group, so
what ``harness list`` shows is exactly what a bench run can use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pluggy

from harness import hookspecs
from harness.errors import UsageError
from harness.records import ROLE_RECORDS

ENTRY_POINT_GROUP = "harness"
ROLE_HOOKS = {
    "scorer": "harness_scorers",
    "pruner": "harness_pruners",
    "adapter": "harness_adapters",
    "task": "harness_tasks",
}


@dataclass(frozen=True)
class Registered:
    """A role record with the role it plays and the distribution it came from."""

    role: str
    record: Any
    dist: str


@dataclass
class Registry:
    """Every registered plugin record, by role and name."""

    by_role: dict[str, dict[str, Registered]] = field(
        default_factory=lambda: {role: {} for role in ROLE_HOOKS}
    )

    def add(self, item: Registered) -> None:
        names = self.by_role[item.role]
        name = item.record.name
        if name in names:
            other = names[name].dist
            raise UsageError(f"{item.role} {name!r} is registered twice ({other} and {item.dist})")
        names[name] = item

    def names(self, role: str) -> list[str]:
        return sorted(self.by_role[role])

    def get(self, role: str, name: str) -> Any:
        try:
            return self.by_role[role][name].record
        except KeyError:
            known = ", ".join(self.names(role)) or "none"
            raise UsageError(f"unknown {role} {name!r} (known: {known})") from None

    def __iter__(self) -> Iterable[Registered]:
        for role in ROLE_HOOKS:
            yield from (self.by_role[role][n] for n in self.names(role))


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution each entry-point plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.dists: dict[int, str] = {}


def _load_entry_points(pm: PluginManager) -> None:
    """Register every ``harness`` entry point; a broken or clashing one is a one-line error.

    (pluggy's own loader would raise a traceback on a failing import and silently
    drop a second plugin that reuses a name.)
    """
    from importlib.metadata import distributions

    seen: dict[str, str] = {}
    for dist in distributions():
        label = f"{dist.metadata['name']} {dist.version}"
        for entry in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            if entry.name in seen:
                if seen[entry.name] != f"{label} {entry.value}":  # the same install seen twice is fine
                    raise UsageError(f"plugin name {entry.name!r} is registered by both {seen[entry.name]} and {label}")
                continue
            seen[entry.name] = f"{label} {entry.value}"
            try:
                plugin = entry.load()
            except Exception as error:
                raise UsageError(f"plugin {entry.name!r} from {label} failed to load: {type(error).__name__}: {error}") from None
            pm.register(plugin, name=entry.name)
            pm.dists[id(plugin)] = label


def make_manager(entry_points: bool = True, extra: Iterable[object] = ()) -> PluginManager:
    """A new manager: entry-point plugins (unless turned off) plus ``extra`` plugin objects."""
    pm = PluginManager()
    if entry_points:
        _load_entry_points(pm)
    for plugin in extra:
        pm.register(plugin)
    return pm


def collect(pm: PluginManager) -> Registry:
    """Call every role hook per plugin so each record keeps the distribution it came from."""
    dists = pm.dists
    registry = Registry()
    for role, hook_name in ROLE_HOOKS.items():
        record_type = ROLE_RECORDS[role]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist = dists.get(id(impl.plugin), "(registered directly)")
            for record in impl.function() or ():
                if not isinstance(record, record_type):
                    raise TypeError(f"{impl.plugin_name}.{hook_name} returned {type(record).__name__}")
                registry.add(Registered(role, record, dist))
    return registry


def load_registry(extra: Iterable[object] = ()) -> Registry:
    return collect(make_manager(extra=extra))


def _coerce(default: Any, raw: str, where: str) -> Any:
    """Parse a command-line option value to the type of the plugin's default."""
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"option {where} takes true or false, not {raw!r}")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise UsageError(f"option {where} takes a {type(default).__name__}, not {raw!r}") from None
    return raw


def parse_options(pairs: Iterable[str], registry: Registry) -> dict[str, dict[str, Any]]:
    """``NAME.KEY=VALUE`` strings into per-plugin overrides, checked against declared defaults."""
    overrides: dict[str, dict[str, Any]] = {}
    records = {item.record.name: item.record for item in registry}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not option:
            raise UsageError(f"option {pair!r} is not of the form PLUGIN.KEY=VALUE")
        if name not in records:
            raise UsageError(f"option {pair!r} names unknown plugin {name!r}")
        defaults: Mapping[str, Any] = records[name].options
        if option not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise UsageError(f"plugin {name!r} has no option {option!r} (options: {known})")
        value = _coerce(defaults[option], raw, key)
        allowed = records[name].choices.get(option)
        if allowed and value not in allowed:
            raise UsageError(f"option {key} takes one of {', '.join(allowed)}, not {raw!r}")
        overrides.setdefault(name, {})[option] = value
    return overrides


def options_for(record: Any, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {**record.options, **overrides.get(record.name, {})}


def options_label(record: Any, overrides: Mapping[str, Mapping[str, Any]]) -> str:
    """Only the options a user changed, as ``name{compact JSON}`` ("" when none)."""
    changed = overrides.get(record.name, {})
    return f"{record.name}{json.dumps(changed, sort_keys=True, separators=(',', ':'))}" if changed else ""
