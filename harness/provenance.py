"""Which commands wrote an output folder, and on which library versions.

A leaderboard is only worth publishing with the command that regenerates it:
``harness bench`` appends its command line and versions to ``commands.json``
beside ``leaderboard.csv`` (a resumed run adds a line), and ``harness report``
heads its pages with them.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from harness import atomic

FILE = "commands.json"
DISTRIBUTIONS = ("prune-harness", "torch", "transformers", "peft", "datasets", "pandas", "scikit-learn", "pluggy",
                 "numpy", "safetensors")


def versions() -> dict[str, str]:
    """Installed versions of the libraries a result depends on (read from metadata: nothing is imported)."""
    import platform

    found = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def read(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / FILE
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    return entries if isinstance(entries, list) else []


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(["harness", *argv])


def record(out: Path, command: str, config: str = "") -> None:
    """Append this run's command (``harness ...`` or a Python call), its settings as a grid file, start time
    and versions to ``OUT/commands.json``."""
    entry = {
        "command": command,
        "config": config,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    atomic.write_text(Path(out) / FILE, json.dumps([*read(out), entry], indent=1) + "\n")


def header(out: Path) -> list[str]:
    """Markdown lines: the distinct commands that wrote ``out`` (oldest first) and the last run's versions."""
    entries = read(out)
    if not entries:
        return []
    commands = list(dict.fromkeys(str(e.get("command", "")) for e in entries))
    latest = entries[-1].get("versions", {})
    lines = ["Regenerate (a rerun resumes: finished cells are skipped):", "", "```bash", *commands, "```", ""]
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in latest.items()) + ".")
    return [*lines, ""]
