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


def spawn_and_hang(request: ScoreRequest) -> None:
    """Start a helper process (its pid goes to $FAULT_PID_FILE), then hang."""
    import subprocess

    helper = subprocess.Popen(["sleep", "600"])
    with open(os.environ["FAULT_PID_FILE"], "w") as handle:
        handle.write(str(helper.pid))
    time.sleep(600)


class Faulty:
    @hookimpl
    def harness_scorers(self) -> list[Scorer]:
        return [Scorer("segfaults", "head", segfault), Scorer("exits", "head", hard_exit),
                Scorer("raises-exit", "head", system_exit), Scorer("hangs", "head", hang),
                Scorer("spawns-and-hangs", "head", spawn_and_hang)]
