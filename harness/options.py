"""Typed plugin options: declared once, as a frozen dataclass, and still a read-only mapping.

A plugin subclasses :class:`Options` with ``@dataclass(frozen=True)``; each field's
annotation gives the type (``bool``, ``int``, ``float``, ``str``, or
``Literal["a", "b"]`` for choices) and :func:`option` its default, inclusive
bounds and help. Parsing and checking ``-o PLUGIN.KEY=VALUE``, the docs and
``harness list --options`` all read that one declaration through
:func:`describe`, which describes the legacy form (a dict of defaults plus the
record's ``choices`` and ``ranges``) the same way, so both kinds of plugin are
parsed and validated alike. An instance is also a ``Mapping[str, Any]``, so code
written for dict options (``options["k"]``, ``options.get("k", d)``, ``{**options}``)
keeps working. Only the standard library is imported here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence, TypeVar

SCALARS: Mapping[str, type] = {"bool": bool, "int": int, "float": float, "str": str}
RESERVED = frozenset({"get", "items", "keys", "values", "of"})  # Mapping methods a field would shadow
OptionsT = TypeVar("OptionsT", bound="Options")


@dataclass(frozen=True)
class OptionSpec:
    """One option, however it was declared: what ``-o`` parses against and what tools show."""

    name: str
    type: str  # one of SCALARS
    default: Any
    choices: tuple[str, ...] = ()
    low: float | None = None  # inclusive; None: unbounded
    high: float | None = None
    help: str = ""

    @property
    def bounded(self) -> bool:
        return self.low is not None or self.high is not None

    def allowed(self) -> str:
        """The choices or the range as one short phrase ("" when anything of the type goes)."""
        if self.choices:
            return "|".join(self.choices)
        low = None if self.low is None or self.low == -math.inf else f"{self.low:g}"
        high = None if self.high is None or self.high == math.inf else f"{self.high:g}"
        if low and high:
            return f"[{low}, {high}]"
        return f">= {low}" if low else f"<= {high}" if high else "finite" if self.bounded else ""


def option(default: Any, *, help: str = "", low: float | None = None, high: float | None = None) -> Any:
    """A field of an :class:`Options` dataclass: its default, inclusive ``[low, high]`` and a one-line help."""
    return dataclasses.field(default=default, metadata={"help": help, "low": low, "high": high})


def range_problem(value: Any, low: float | None, high: float | None) -> str | None:
    """Why ``value`` is outside the inclusive ``[low, high]``, as the end of a sentence; ``None`` when inside."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "is not a finite number"
    if low is not None and value < low:
        return f"is below its minimum {low:g}"
    if high is not None and value > high:
        return f"is above its maximum {high:g}"
    return None


def _either(choices: tuple[str, ...]) -> str:
    quoted = [repr(choice) for choice in choices]
    return " or ".join(quoted) if len(quoted) < 3 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def check_value(spec: OptionSpec, value: Any) -> Any:
    """``value`` as the option holds it (an int widened for a float), or ``ValueError`` saying what is wrong."""
    kind = SCALARS[spec.type]
    fits = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, fits = float(value), True
    if spec.choices and not (fits and value in spec.choices):  # the choices say more than the type
        raise ValueError(f"{spec.name} must be {_either(spec.choices)}, not {value!r}")
    if not fits:
        raise ValueError(f"{spec.name} must be {'an' if spec.type == 'int' else 'a'} {spec.type}, not {value!r}")
    problem = range_problem(value, spec.low, spec.high) if spec.bounded else None
    if problem:
        raise ValueError(f"{spec.name} {problem}, not {value!r}")
    return value


def _kind(cls: type, name: str, annotation: Any) -> tuple[str, tuple[str, ...]]:
    """(type name, choices) of a field's annotation; anything else is a declaration error."""
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        if values and all(isinstance(v, str) for v in values):
            return "str", tuple(values)
    for type_name, kind in SCALARS.items():
        if annotation is kind:
            return type_name, ()
    raise TypeError(f"{cls.__name__}.{name}: an option is a bool, int, float, str or Literal of strings, "
                    f"not {annotation!r}")


@functools.lru_cache(maxsize=None)
def specs(cls: type[Options]) -> tuple[OptionSpec, ...]:
    """The class's options with their class defaults; ``TypeError`` for a declaration the harness cannot parse."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a @dataclass(frozen=True)")
    try:
        hints = typing.get_type_hints(cls)
    except NameError as error:  # a string annotation naming something only a function's scope had
        raise TypeError(f"{cls.__name__}: cannot resolve its annotations ({error}); define it at module level") from None
    found = []
    for field in dataclasses.fields(cls):
        if field.name in RESERVED or field.name.startswith("_") or "." in field.name:
            raise TypeError(f"{cls.__name__}.{field.name}: not usable as an option name")
        if field.default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: an option needs a default")
        type_name, choices = _kind(cls, field.name, hints[field.name])
        meta = field.metadata
        found.append(OptionSpec(field.name, type_name, field.default, choices, meta.get("low"), meta.get("high"),
                                meta.get("help", "")))
    return tuple(found)


class Options(Mapping[str, Any]):
    """Base of a plugin's typed options; subclass it as a module-level ``@dataclass(frozen=True)``.

    Values are checked on creation (type, choices, range), so a bad default fails
    when the record is built, with ``ValueError`` naming the class and field. A
    subclass with checks across fields overrides ``__post_init__`` and calls
    ``super().__post_init__()`` first. Compare instances with ``dict(options)``
    when the other side is a plain dict.
    """

    __slots__ = ()

    def __post_init__(self) -> None:
        for spec in specs(type(self)):
            value = getattr(self, spec.name)
            try:
                checked = check_value(spec, value)
            except ValueError as error:
                raise ValueError(f"{type(self).__name__}: {error}") from None
            if checked is not value:
                object.__setattr__(self, spec.name, checked)

    @classmethod
    def of(cls: type[OptionsT], options: Mapping[str, Any], defaults: OptionsT | None = None) -> OptionsT:
        """``options`` as this class: itself if it is one, else ``defaults`` (or the class's) updated with it.

        Plugin functions call this on ``request.options``: the harness passes the
        typed instance, tests and older callers may pass a (partial) dict.
        """
        if isinstance(options, cls):
            return options
        base = cls() if defaults is None else defaults
        unknown = sorted(set(options) - set(base))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option {unknown[0]!r} (options: {', '.join(base)})")
        return dataclasses.replace(base, **dict(options))

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return _names(cls)


@functools.lru_cache(maxsize=None)
def _names(cls: type[Options]) -> tuple[str, ...]:
    return tuple(spec.name for spec in specs(cls))


def describe(record: Any) -> list[OptionSpec]:
    """Every option of a role record, typed (defaults from the record's instance) or legacy dict form."""
    options = getattr(record, "options", {})  # a record of a role without options has none
    if isinstance(options, Options):
        return [dataclasses.replace(spec, default=getattr(options, spec.name)) for spec in specs(type(options))]
    choices, ranges = getattr(record, "choices", None) or {}, getattr(record, "ranges", None) or {}
    described = []
    for key, default in options.items():
        kind = next((name for name, t in SCALARS.items() if isinstance(default, t)), "str")  # bool before int
        low, high = ranges.get(key, (None, None))
        if key in ranges and low is None and high is None:  # declared unbounded: still a finite number
            low, high = -math.inf, math.inf
        described.append(OptionSpec(key, kind, default, tuple(choices.get(key, ())), low, high))
    return described


def show(value: Any) -> str:
    """A value as a user types it after ``-o PLUGIN.KEY=``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, float):
        return str(value)
    text = f"{value:g}"
    return text if any(c in text for c in ".en") else f"{text}.0"  # 1.0, not 1: the type shows


def table(described: Sequence[OptionSpec]) -> list[str]:
    """One aligned line per option (name, type, default, choices or range, help), for ``harness list --options``."""
    rows = [(s.name, s.type, show(s.default), s.allowed() or "-", s.help) for s in described]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(4)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[4]]).rstrip() for row in rows]


def resolve(record: Any, changed: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record's options with ``changed`` applied: a new typed instance (checked again), or a merged dict."""
    options = record.options
    if isinstance(options, Options):
        return dataclasses.replace(options, **dict(changed)) if changed else options
    return {**options, **changed}
