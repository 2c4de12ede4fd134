"""Code identity: which code computed a result, so a changed line never reuses a stale one.

Run ids and cache keys hash the harness's own sources (every ``.py`` file of
the installed ``harness`` package) and, for each plugin a result depends on,
its distribution name and version plus a hash of the source of the module that
defines its function and of the modules of the same package that module uses.
Editing a plugin (or the harness) and re-running into the same ``--out``
therefore recomputes exactly what that code touched; bumping a version is not
needed, and not enough on its own.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

FUNCTIONS = ("score", "compute_mask", "train", "load")  # the one callable of each role record


@functools.lru_cache(maxsize=1)
def core_code() -> str:
    """sha256 (16 hex) over the sources of the installed ``harness`` package, by relative path."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _function(record: Any) -> Callable[..., Any] | None:
    for name in FUNCTIONS:
        fn = getattr(record, name, None)
        if fn is not None:
            while isinstance(fn, functools.partial):
                fn = fn.func
            return getattr(fn, "__func__", fn)  # a bound method: its function
    return None


def _owner(value: Any) -> str | None:
    if isinstance(value, ModuleType):
        return value.__name__
    owner = getattr(value, "__module__", None)
    return owner if isinstance(owner, str) else None


def module_closure(name: str) -> list[str]:
    """``name`` and the modules of its top-level package it reaches through its globals (transitively)."""
    top = name.split(".")[0]
    seen: set[str] = set()
    todo = [name]
    while todo:
        module = sys.modules.get(todo.pop())
        if module is None or module.__name__ in seen:
            continue
        seen.add(module.__name__)
        for value in list(vars(module).values()):
            owner = _owner(value)
            if owner and owner.split(".")[0] == top and owner not in seen:
                todo.append(owner)
    return sorted(seen)


@functools.lru_cache(maxsize=256)
def _file_hash(path: str, mtime_ns: int, size: int) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()


def _source_hash(modules: list[str]) -> str:
    """Hash of the modules' files as they are on disk now (re-read whenever a file changes)."""
    h = hashlib.sha256()
    for name in modules:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and Path(path).is_file():
            stat = Path(path).stat()
            data = _file_hash(str(path), stat.st_mtime_ns, stat.st_size)
        else:
            data = b"(no source)"
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return dict(packages_distributions())


def _distribution(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = _distributions().get(module.split(".")[0], [])
    if not names:
        return "(not packaged)"
    try:
        return f"{names[0]} {version(names[0])}"
    except PackageNotFoundError:
        return names[0]


def of(record: Any) -> str:
    """``"<distribution> <version> <source hash>"`` of a role record's code (``""`` for none)."""
    if record is None:
        return ""
    fn = _function(record)
    module = getattr(fn, "__module__", None)
    if not isinstance(module, str):
        return f"(no module) {type(fn).__name__}"
    return f"{_distribution(module)} {_source_hash(module_closure(module))}"
