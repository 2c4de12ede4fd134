"""Claims on units of work, so two runs on one ``--out`` never compute the same unit at the same time.

A claim is an exclusive ``flock`` on ``<out>/.claims/<key>.lock``. The kernel
drops it when its holder exits, however it exits (``kill -9`` included), so a
dead run never blocks a later one. The lock files stay (empty): removing a lock
file another process may be waiting on would let two runs hold "the" claim.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FOLDER = ".claims"


@contextmanager
def claim(out: Path, key: str, wait: bool) -> Iterator[bool]:
    """Hold the claim on ``key`` for the block; yields False at once if another process holds it and not ``wait``."""
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
