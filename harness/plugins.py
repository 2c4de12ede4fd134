"""Plugin discovery: a fresh pluggy manager per call, loaded from the ``harness`` entry points.

Built-ins and third-party packages go through the same entry-point group, so
what ``harness list`` shows is exactly what a bench run can use. Two
distributions may register the same name: both load, and only using the bare
name is an error, so one clash never breaks every command; ``DIST:NAME``
selects either.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import pluggy

from harness import hookspecs
from harness.errors import UsageError
from harness.options import OptionSpec, describe, range_problem, resolve
from harness.records import ROLE_RECORDS

ENTRY_POINT_GROUP = "harness"
ROLE_HOOKS = {
    "scorer": "harness_scorers",
    "pruner": "harness_pruners",
    "adapter": "harness_adapters",
    "task": "harness_tasks",
    "granularity": "harness_granularities",
}
DIRECT = "(registered directly)"


def normalize_dist(name: str) -> str:
    """PEP 503 form, so ``prune_harness:x`` and ``Prune-Harness:x`` qualify the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Registered:
    """A role record with the role it plays and the distribution it came from.

    ``dist`` is what ``harness list`` shows (``name version``); ``source`` is the
    distribution's name (a directly registered plugin's module or class name),
    the ``DIST`` of a qualified ``DIST:NAME``.
    """

    role: str
    record: Any
    dist: str
    source: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.source}:{self.record.name}"


@dataclass
class Registry:
    """Every registered plugin record, by role and bare name (several when distributions clash)."""

    by_role: dict[str, dict[str, list[Registered]]] = field(
        default_factory=lambda: {role: {} for role in ROLE_HOOKS}
    )

    def add(self, item: Registered) -> None:
        """One distribution registering a name twice cannot be told apart even when qualified: an error."""
        same = self.by_role[item.role].setdefault(item.record.name, [])
        if any(normalize_dist(other.source) == normalize_dist(item.source) for other in same):
            raise UsageError(f"{item.role} {item.record.name!r} is registered twice by {item.dist}")
        same.append(item)

    def label(self, item: Registered) -> str:
        """The name that selects ``item`` and labels its rows: bare while unique in its role, else ``DIST:NAME``."""
        return item.record.name if len(self.by_role[item.role][item.record.name]) == 1 else item.qualified

    def names(self, role: str) -> list[str]:
        return sorted(self.label(item) for items in self.by_role[role].values() for item in items)

    def _matches(self, role: str, name: str) -> list[Registered]:
        """Every item a bare name could mean, or the one a qualified ``DIST:NAME`` means."""
        if name in self.by_role[role]:
            return self.by_role[role][name]
        source, colon, bare = name.partition(":")
        wanted = normalize_dist(source)
        return [i for i in self.by_role[role].get(bare, ()) if colon and normalize_dist(i.source) == wanted]

    def has(self, role: str, name: str) -> bool:
        """Whether ``name`` (bare, even if ambiguous, or qualified) names a plugin of ``role``."""
        return bool(self._matches(role, name))

    def get(self, role: str, name: str) -> Any:
        """The record ``name`` selects, renamed to its label when that is qualified (rows never share a label)."""
        matches = self._matches(role, name)
        if not matches:
            known = ", ".join(self.names(role)) or "none"
            raise UsageError(f"unknown {role} {name!r} (known: {known})")
        if len(matches) > 1:
            choices = " or ".join(item.qualified for item in matches)
            raise UsageError(f"{role} {name!r} is registered by {len(matches)} distributions: use {choices}")
        item = matches[0]
        label = self.label(item)
        return item.record if label == item.record.name else dataclasses.replace(item.record, name=label)

    def __iter__(self) -> Iterator[Registered]:
        for role in ROLE_HOOKS:
            items = [item for same in self.by_role[role].values() for item in same]
            yield from sorted(items, key=self.label)


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution each entry-point plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.dists: dict[int, tuple[str, str]] = {}  # id(plugin) -> (dist label, dist name)


def _register(pm: PluginManager, plugin: object, name: str | None, where: str) -> None:
    """pluggy's validation of a hook's signature, as a one-line error instead of a traceback."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as error:
        raise UsageError(f"plugin {name or _direct_name(plugin)!r} from {where}: {error}") from None


def _load_entry_points(pm: PluginManager) -> None:
    """Register every ``harness`` entry point; a broken one is a one-line error.

    (pluggy's own loader would raise a traceback on a failing import and refuse a
    second plugin that reuses a name: here the second is registered as ``DIST:NAME``.)
    """
    from importlib.metadata import distributions

    seen: set[tuple[str, str, str]] = set()
    for dist in distributions():
        source = dist.metadata["name"]
        label = f"{source} {dist.version}"
        for entry in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            if (label, entry.name, entry.value) in seen:  # the same install found twice on the path
                continue
            seen.add((label, entry.name, entry.value))
            try:
                plugin = entry.load()
            except Exception as error:
                raise UsageError(f"plugin {entry.name!r} from {label} failed to load: {type(error).__name__}: {error}") from None
            if pm.is_registered(plugin):  # one module listed twice: its records are already there
                continue
            name = entry.name if pm.get_plugin(entry.name) is None else f"{source}:{entry.name}"
            _register(pm, plugin, name, label)
            pm.dists[id(plugin)] = (label, source)


def _direct_name(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__name__


def _check_hooks(pm: PluginManager) -> None:
    """A misspelled hook (``harness_scorer``) would register nothing, silently: name it and the closest hook."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        for hook, caller in vars(pm.hook).items():
            if hook.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(hook, list(ROLE_HOOKS.values()), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"hooks: {', '.join(ROLE_HOOKS.values())}"
                where = pm.dists.get(id(impl.plugin), (DIRECT, ""))[0]
                name = pm.get_name(impl.plugin) if id(impl.plugin) in pm.dists else _direct_name(impl.plugin)
                raise UsageError(f"plugin {name!r} ({where}) implements unknown hook {hook!r} ({hint})") from None
        raise


def make_manager(entry_points: bool = True, extra: Iterable[object] = ()) -> PluginManager:
    """A new manager: entry-point plugins (unless turned off) plus ``extra`` plugin objects, hooks checked."""
    pm = PluginManager()
    if entry_points:
        _load_entry_points(pm)
    for plugin in extra:
        _register(pm, plugin, None, DIRECT)
    _check_hooks(pm)
    return pm


def collect(pm: PluginManager) -> Registry:
    """Call every role hook per plugin so each record keeps the distribution it came from."""
    registry = Registry()
    for role, hook_name in ROLE_HOOKS.items():
        record_type = ROLE_RECORDS[role]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist, source = pm.dists.get(id(impl.plugin), (DIRECT, _direct_name(impl.plugin)))
            for record in impl.function() or ():
                if not isinstance(record, record_type):
                    raise TypeError(f"{impl.plugin_name}.{hook_name} returned {type(record).__name__}")
                registry.add(Registered(role, record, dist, source))
    return registry


def load_registry(extra: Iterable[object] = ()) -> Registry:
    return collect(make_manager(extra=extra))


def _coerce(spec: OptionSpec, raw: str, where: str) -> Any:
    """Parse a command-line option value to the option's declared type (legacy: its default's)."""
    if spec.type == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"option {where} takes true or false, not {raw!r}")
    try:
        if spec.type == "int":
            return int(raw)
        if spec.type == "float":
            return float(raw)
    except ValueError:
        raise UsageError(f"option {where} takes a {spec.type}, not {raw!r}") from None
    return raw


def _check_range(value: Any, spec: OptionSpec, where: str) -> None:
    """A value against the option's inclusive ``[low, high]`` (``None``: unbounded)."""
    problem = range_problem(value, spec.low, spec.high)
    if problem:
        raise UsageError(f"option {where} {problem}")


def _records_named(registry: Registry, name: str, pair: str) -> list[Any]:
    """The records (any role) a bare or qualified plugin name selects; an ambiguous bare name is an error."""
    found = [registry.get(role, name) for role in ROLE_HOOKS if registry.has(role, name)]
    if not found:
        raise UsageError(f"option {pair!r} names unknown plugin {name!r}")
    return found


def _spec_of(records: list[Any], name: str, option: str) -> tuple[Any, OptionSpec]:
    """The first record (any role) of ``name`` that has ``option``, with its description; else a one-line error."""
    described = [(record, describe(record)) for record in records]
    for record, specs in described:
        for spec in specs:
            if spec.name == option:
                return record, spec
    known = ", ".join(sorted({spec.name for _, specs in described for spec in specs})) or "none"
    raise UsageError(f"plugin {name!r} has no option {option!r} (options: {known})")


def parse_options(pairs: Iterable[str], registry: Registry) -> dict[str, dict[str, Any]]:
    """``NAME.KEY=VALUE`` strings into overrides keyed by plugin label, checked against types, choices and ranges.

    ``NAME`` may be qualified (``DIST:NAME``, whose ``DIST`` may hold dots), so
    the key is split at its last dot: option keys never hold one. Typed and dict
    options are checked alike (:func:`harness.options.describe`); a typed
    record's own checks across fields run here too, before any work.
    """
    overrides: dict[str, dict[str, Any]] = {}
    checked: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        name, dot, option = key.rpartition(".")
        if not sep or not dot or not name or not option:
            raise UsageError(f"option {pair!r} is not of the form PLUGIN.KEY=VALUE")
        record, spec = _spec_of(_records_named(registry, name, pair), name, option)
        value = _coerce(spec, raw, key)
        if spec.choices and value not in spec.choices:
            raise UsageError(f"option {key} takes one of {', '.join(spec.choices)}, not {raw!r}")
        if spec.bounded:
            _check_range(value, spec, f"{key}={raw}")
        overrides.setdefault(record.name, {})[option] = value
        checked[record.name] = record
    for label, record in checked.items():
        try:
            resolve(record, overrides[label])
        except ValueError as error:
            raise UsageError(f"options of {label}: {error}") from None
    return overrides


def options_for(record: Any, overrides: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """The options a record's function gets: its typed instance with the overrides applied, or a merged dict."""
    return resolve(record, overrides.get(record.name, {}))


def options_label(record: Any, overrides: Mapping[str, Mapping[str, Any]]) -> str:
    """Only the options a user changed, as ``name{compact JSON}`` ("" when none)."""
    changed = overrides.get(record.name, {})
    return f"{record.name}{json.dumps(changed, sort_keys=True, separators=(',', ':'))}" if changed else ""
