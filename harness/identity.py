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

from harness.models import sha256_of

FUNCTIONS = ("score", "compute_mask", "train", "load")  # the one callable of each role record


@functools.lru_cache(maxsize=1)
def core_code() -> str:
    """sha256 (16 hex) over the sources of the installed ``harness`` package, by relative path."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(f"{path.relative_to(root)}\0{sha256_of(path)}\0".encode())
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
    """``name`` and the modules of its top-level package it uses, transitively.

    Both what its globals hold (functions, classes, modules of the package) and
    what its source imports anywhere (``from pkg.settings import SHIFT`` brings
    in ``pkg.settings`` though ``SHIFT`` is a plain number; imports inside
    functions count too).
    """
    top = name.split(".")[0]
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or _source_of(current) is None:
            continue
        seen.add(current)
        module = sys.modules.get(current)
        owners = {_owner(value) for key, value in list(vars(module).items())
                  if not _submodule_attribute(current, key, value)} if module else set()
        for used in (owners | _imports(current)) - seen:
            if used and used.split(".")[0] == top:
                todo.append(used)
    return sorted(seen)


def _submodule_attribute(package: str, key: str, value: Any) -> bool:
    """``pkg.sub`` as attribute ``sub`` of ``pkg``: set by importing it anywhere, not a use by ``pkg``.

    Following it would make a closure through the package depend on which siblings
    this process happens to have imported (the parent's differs from a worker's).
    What the package's own source imports still counts, through its imports.
    """
    return isinstance(value, ModuleType) and value.__name__ == f"{package}.{key}"


def _source_of(name: str) -> str | None:
    """The source file of a module, imported or not (None: not a module, or no Python source)."""
    import importlib.util

    module = sys.modules.get(name)
    path = getattr(module, "__file__", None) if module else None
    if path is None and module is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError, AttributeError):
            return None
        path = spec.origin if spec else None
    return path if path and path.endswith(".py") and Path(path).is_file() else None


def _imports(name: str) -> set[str]:
    """Module names the source of ``name`` imports (``from a import b``: ``a`` and, if a module, ``a.b``)."""
    path = _source_of(name)
    if path is None:
        return set()
    stat = Path(path).stat()
    return set(_parsed_imports(name, path, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=256)
def _parsed_imports(name: str, path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    import ast
    import importlib.util

    try:
        tree = ast.parse(Path(path).read_bytes())
    except SyntaxError:
        return ()
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            except (ImportError, ValueError):
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return tuple(sorted(found))


def _source_hash(modules: list[str]) -> str:
    """Hash of the modules' files as they are on disk now (re-read whenever a file changes)."""
    h = hashlib.sha256()
    for name in modules:  # imported or not: a sibling a plugin imports lazily hashes the same in every process
        path = _source_of(name)
        data = sha256_of(Path(path)) if path else "(no source)"
        h.update(f"{name}\0{data}\0".encode())
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
