"""Processes of the tests: seen through /proc (what a program started below it), and stopped
(asked with SIGTERM, killed if it does not stop within the timeout, always waited for, so it
leaves no zombie)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def cmdline(pid: int) -> str:
    """The command line, its arguments joined by spaces ("" once the process is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (not `pid` itself), nearest first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent_ in parents.items() if parent_ in frontier]
        found += frontier
    return found


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # Popen's own: no signal to a pid it has already reaped
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
