"""Whole-file writes that never leave a half-written file, and cleanup after writers that were killed.

Every output (leaderboard, aggregates, reports, spectra, cache entries) is written
to ``.<name>.<pid>.tmp`` beside its target and renamed over it. A SIGKILL between
the two leaves only that temporary behind; it carries the writer's pid, so a
later run can tell it is stale (that process is gone) and remove it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")


def temporary_for(path: Path) -> Path:
    """The temporary sibling this process writes ``path`` through."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write(path: Path, writer: Callable[[Path], None]) -> Path:
    """Let ``writer`` fill a temporary sibling, flush it to disk, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_for(path)
    try:
        writer(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """Atomic :meth:`Path.write_text`."""
    return write(path, lambda temporary: temporary.write_text(text))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep(folder: Path, min_age_s: float = 0.0) -> list[Path]:
    """Remove temporaries in ``folder`` whose writer process no longer exists; the removed paths.

    A temporary of a live process is a write in progress and stays. ``min_age_s``
    guards folders other machines may write to (a shared cache), where a pid
    says nothing: only temporaries untouched that long go.
    """
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_file() or _alive(int(match.group(1))):
            continue
        if now - entry.stat().st_mtime >= min_age_s:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str) -> str:
    """A file-name-safe form of a user-given name: no separators, no ``..``, no leading dot."""
    cleaned = _UNSAFE.sub("-", str(text)).replace("..", "-").strip(".-")
    return cleaned or "unnamed"


def confined(root: Path | str, *names: str) -> Path:
    """``root/name/...`` with each name made a slug, checked to stay inside ``root``."""
    base = Path(root).resolve()
    path = base.joinpath(*(slug(name) for name in names)).resolve()
    if base != path and base not in path.parents:
        raise ValueError(f"{path} is outside {base}")
    return path
