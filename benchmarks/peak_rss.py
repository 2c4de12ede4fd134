"""Peak memory of a ``harness bench`` run, over its whole process tree: where a grid's RAM goes.

A grid runs in several processes (the ``harness`` parent holding the plan and
the loaded task data, the fork server, one child per unit), so the ``ru_maxrss``
of one of them says little. This runs the command given after ``--`` as a
subprocess and samples every process of its tree every ``--interval`` seconds
with psutil: RSS always, and with ``--full`` also USS and PSS
(``memory_full_info``, read from ``/proc/PID/smaps``: pages the fork server shares
with its children count once in PSS, but reading a 1 GB process takes about
0.2 s, so samples come further apart). It prints the peak of the
SUM over the tree and the peak of the largest single process, per process role
(parent, forkserver, unit child, other) and per phase (the progress bar's
description, read from the command's stderr, which is passed through).

    python benchmarks/peak_rss.py [--full] [--csv samples.csv] -- harness bench --tasks sst2 ...

A command starting with ``bench`` runs the ``harness`` next to this Python.
Numbers only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MB = 1024 * 1024
# tqdm's line: "<description>:  12%|###   | 3/25 [00:10<01:02, ...]" or "<description>: 3/25 ..."
_BAR = re.compile(r"^(?P<desc>.*?):\s+(?:\d+%\|.*|\d+/\d+ .*)$")


@dataclass
class Peak:
    """The largest value seen and when (seconds since start), with the phase and process behind it."""

    value: float = 0.0
    at: float = 0.0
    phase: str = ""
    who: str = ""

    def see(self, value: float, at: float, phase: str, who: str) -> None:
        if value > self.value:
            self.value, self.at, self.phase, self.who = value, at, phase, who


@dataclass
class Peaks:
    """Per metric (rss, uss, pss): the tree sum's and the largest process's peaks, overall, per role and phase."""

    tree: dict[str, Peak] = field(default_factory=dict)
    single: dict[str, Peak] = field(default_factory=dict)
    roles: dict[tuple[str, str], Peak] = field(default_factory=dict)
    phases: dict[tuple[str, str], Peak] = field(default_factory=dict)  # (metric, phase): tree sum
    processes: int = 0


class Phase:
    """The progress bar's latest description, from the command's stderr (echoed to ours as it comes)."""

    def __init__(self) -> None:
        self.label = "start"

    def follow(self, stream: IO[bytes]) -> None:
        pending = b""
        for chunk in iter(lambda: stream.read1(4096), b""):
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in [*lines, pending]:  # tqdm ends a bar with the next "\r": the pending text is the current bar
                match = _BAR.match(line.decode(errors="replace").strip())
                if match and match.group("desc"):
                    self.label = match.group("desc")[-80:]


def role(process: Any, root: int, forkserver: int | None) -> str:
    """What a process of the tree is: the parent, the fork server, a unit's child, or something else."""
    if process.pid == root:
        return "parent"
    if process.pid == forkserver:
        return "forkserver"
    if forkserver is not None and forkserver in {p.pid for p in process.parents()}:
        return "unit child"
    return "other"


def _forkserver(processes: list[Any]) -> int | None:
    for process in processes:
        try:
            if any("forkserver" in part for part in process.cmdline()):
                return process.pid
        except Exception:  # gone meanwhile
            continue
    return None


def sample(root: Any, full: bool) -> list[tuple[str, int, dict[str, int]]]:
    """Every live process of the tree: (role, pid, {rss[, uss, pss]} in bytes)."""
    import psutil

    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    server = _forkserver(processes[1:])
    found = []
    for process in processes:
        try:
            found.append((role(process, root.pid, server), process.pid, _memory(process, full)))
        except psutil.Error:  # ended between listing and reading
            continue
    return found


def _memory(process: Any, full: bool) -> dict[str, int]:
    """RSS, and USS and PSS with ``full``; a process whose smaps may not be read (another user's) counts its RSS
    as its USS and PSS, so the tree's sums never leave it out."""
    import psutil

    if full:
        try:
            info = process.memory_full_info()
            return {"rss": info.rss, "uss": info.uss, "pss": getattr(info, "pss", info.uss)}
        except psutil.AccessDenied:
            pass
    rss = process.memory_info().rss
    return {"rss": rss, "uss": rss, "pss": rss} if full else {"rss": rss}


def record(peaks: Peaks, found: list[tuple[str, int, dict[str, int]]], at: float, phase: str,
           writer: Any | None) -> None:
    peaks.processes = max(peaks.processes, len(found))
    for metric in (found[0][2] if found else {}):
        total = sum(values[metric] for _, _, values in found)
        largest = max(found, key=lambda item: item[2][metric])
        who = ", ".join(f"{r} {v[metric] / MB:.0f}" for r, _, v in sorted(found, key=lambda f: -f[2][metric]))
        peaks.tree.setdefault(metric, Peak()).see(total, at, phase, who)
        peaks.single.setdefault(metric, Peak()).see(largest[2][metric], at, phase, f"{largest[0]} pid {largest[1]}")
        peaks.phases.setdefault((metric, phase), Peak()).see(total, at, phase, who)
        for name, pid, values in found:
            peaks.roles.setdefault((metric, name), Peak()).see(values[metric], at, phase, f"pid {pid}")
    if writer is not None:
        for name, pid, values in found:
            writer.writerow([f"{at:.2f}", phase, name, pid, *(values.get(m, "") for m in ("rss", "uss", "pss"))])


def watch(argv: list[str], interval: float, full: bool, csv_path: Path | None) -> tuple[Peaks, int, float]:
    """Run the command, sampling its tree until it ends: the peaks, its exit status and wall seconds."""
    import psutil

    command = subprocess.Popen(argv, stderr=subprocess.PIPE)
    phase = Phase()
    reader = threading.Thread(target=phase.follow, args=(command.stderr,), daemon=True)
    reader.start()
    root, peaks, start = psutil.Process(command.pid), Peaks(), time.monotonic()
    handle = open(csv_path, "w", newline="") if csv_path else None
    writer = csv.writer(handle) if handle else None
    if writer:
        writer.writerow(["t_s", "phase", "role", "pid", "rss", "uss", "pss"])
    try:
        while command.poll() is None:
            record(peaks, sample(root, full), time.monotonic() - start, phase.label, writer)
            time.sleep(interval)
    finally:
        if handle:
            handle.close()
    reader.join(timeout=5)
    return peaks, command.returncode, time.monotonic() - start


def report(peaks: Peaks, status: int, seconds: float, full: bool) -> None:
    metrics = ("rss", "uss", "pss") if full else ("rss",)
    print(f"\nexit status {status}, {seconds:.0f} s, up to {peaks.processes} processes; "
          f"memory from psutil ({'memory_full_info: RSS, USS, PSS' if full else 'memory_info: RSS'})")
    for metric in metrics:
        tree, single = peaks.tree.get(metric, Peak()), peaks.single.get(metric, Peak())
        print(f"\n{metric.upper()} peak, sum over the tree: {tree.value / MB:8.0f} MiB at {tree.at:.0f} s "
              f"({tree.phase}; {tree.who})")
        print(f"{metric.upper()} peak, largest process:   {single.value / MB:8.0f} MiB at {single.at:.0f} s "
              f"({single.who}, {single.phase})")
        for (name, who), peak in sorted(peaks.roles.items()):
            if name == metric:
                print(f"  {who:<11} peak {peak.value / MB:8.0f} MiB at {peak.at:6.0f} s  ({peak.phase})")
        print(f"  per phase (tree sum, {metric.upper()}):")
        for (name, label), peak in sorted(peaks.phases.items(), key=lambda item: item[1].at):
            if name == metric:
                print(f"    {peak.value / MB:8.0f} MiB  {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.15, help="seconds between samples (0.1-0.2)")
    parser.add_argument("--full", action="store_true", help="also USS and PSS (memory_full_info; slower)")
    parser.add_argument("--csv", type=Path, help="write every sample (time, phase, role, pid, rss, uss, pss)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- harness bench ... (or: -- bench ...)")
    args = parser.parse_args()
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        parser.error("give the command to measure after --")
    if argv[0] == "bench":
        argv = [str(Path(sys.executable).parent / "harness"), *argv]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    peaks, status, seconds = watch(argv, args.interval, args.full, args.csv)
    report(peaks, status, seconds, args.full)


if __name__ == "__main__":
    main()
