"""Third-party plugins that fail the hard way, importable by name so a child process can run them.

Each is a head scorer: a segfault, ``os._exit``, ``SystemExit`` and a hang.
"""

from __future__ import annotations

import os
import signal
import time

from harness import Scorer, ScoreRequest, hookimpl


def segfault(request: ScoreRequest) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def hard_exit(request: ScoreRequest) -> None:
    os._exit(3)


def system_exit(request: ScoreRequest) -> None:
    raise SystemExit(4)


def hang(request: ScoreRequest) -> None:
    time.sleep(600)


class Faulty:
    @hookimpl
    def harness_scorers(self) -> list[Scorer]:
        return [Scorer("segfaults", "head", segfault), Scorer("exits", "head", hard_exit),
                Scorer("raises-exit", "head", system_exit), Scorer("hangs", "head", hang)]
