"""TensorBoard scalars per run (training loss, gates, eval metric); a no-op unless asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from harness.errors import UsageError

Log = Callable[[str, float, int], None]


def _drop(name: str, value: float, step: int) -> None:
    """No TensorBoard directory: scalars go nowhere."""


def check_available() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install 'prune-harness[tensorboard]'") from None


def recording(log: Log, last: dict[str, float]) -> Log:
    """Forward to ``log`` and keep each scalar's last value (the leaderboard's ``extras``)."""

    def record(name: str, value: float, step: int) -> None:
        last[name] = float(value)
        log(name, value, step)

    return record


class Scalars:
    """One TensorBoard run folder per name under ``root``; writers are opened on first use."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.writers: dict[str, Any] = {}

    def logger(self, run: str) -> Log:
        if self.root is None:
            return _drop

        def log(name: str, value: float, step: int) -> None:
            if run not in self.writers:
                from torch.utils.tensorboard import SummaryWriter

                self.writers[run] = SummaryWriter(log_dir=str(Path(self.root) / run))
            self.writers[run].add_scalar(name, value, step)

        return log

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
