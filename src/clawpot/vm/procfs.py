"""Facts about other processes from /proc, with PID reuse in mind.

A PID alone can be recycled; a PID plus its start time (in clock ticks since boot) names one process.
"""

from __future__ import annotations

import os
from pathlib import Path


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of stat(5)


def is_alive(pid: int, ticks: int | None = None) -> bool:
    """True while ``pid`` runs (not a zombie) and, when given, still has start time ``ticks``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False
    return ticks is None or int(fields[19]) == ticks


def uptime_of(pid: int) -> float | None:
    """Seconds since ``pid`` started, or None if it is gone."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    boot_uptime = float(Path("/proc/uptime").read_text().split()[0])
    return max(0.0, boot_uptime - ticks / os.sysconf("SC_CLK_TCK"))


def command_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
