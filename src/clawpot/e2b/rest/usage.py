"""A sandbox's resource use as E2B's ``SandboxMetric``, read from /proc and the VM's disk file.

Minimal and replaceable (a per-VM usage reader elsewhere can take its place behind ``UsageReader``):
- CPU: the VMM process's user + system time, as a share of the VM's vCPUs, over the interval since the
  previous read of the same VM (the first read: since the VMM started). Under TCG this includes the
  emulator's own work: it is what the VM costs the host.
- memory: the VMM's resident set (``VmRSS``), at most the guest memory; ``memTotal`` the guest memory.
- disk: the per-VM writable layer, allocated bytes of total (the base image is shared and read-only).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from clawpot.vm.directory import SCRATCH_NAME

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    timestamp: float
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int


class UsageReader:
    def __init__(self) -> None:
        self._last: dict[tuple[int, str], tuple[float, float]] = {}  # (pid, vm) -> (monotonic, cpu s)

    def read(self, vm_id: str, pid: int | None, vcpus: int, memory_mib: int, vm_dir: Path) -> Usage:
        mem_total = memory_mib << 20
        cpu_pct, rss = 0.0, 0
        if pid is not None:
            cpu_pct = self._cpu_pct(vm_id, pid, vcpus)
            rss = min(_rss(pid), mem_total)
        disk_used, disk_total = _disk(vm_dir / SCRATCH_NAME)
        return Usage(time.time(), vcpus, cpu_pct, rss, mem_total, disk_used, disk_total)

    def _cpu_pct(self, vm_id: str, pid: int, vcpus: int) -> float:
        sample = _cpu_seconds(pid)
        if sample is None:
            return 0.0
        cpu, started = sample
        now = time.monotonic()
        previous = self._last.get((pid, vm_id))
        self._last[(pid, vm_id)] = (now, cpu)
        if previous is not None and now > previous[0]:
            used, elapsed = cpu - previous[1], now - previous[0]
        else:
            used, elapsed = cpu, max(1e-3, _uptime() - started)
        return round(max(0.0, min(100.0, 100.0 * used / elapsed / max(1, vcpus))), 2)


def _cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(user + system seconds, start time in seconds since boot) of ``pid``; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # After the ")": state is field 3, so utime (14), stime (15), starttime (22) are at 11, 12, 19.
    return (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[19]) / _TICKS


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _disk(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return 0, 0
    return st.st_blocks * 512, st.st_size
