"""What a VM costs the host right now: CPU seconds used so far and memory held, read from the kernel.

From the VM's cgroup where it has one (``cpu.stat`` ``usage_usec``, ``memory.current``: the VMM and
every thread or helper it started), else from its VMM process in ``/proc`` (``stat`` utime + stime,
``statm`` resident pages). A VM gets a cgroup from whoever places it in one: ``set_cgroup_locator``
is the seam (the jailer's placement registers a function from VM id to cgroup directory).

Reads are a few small files per VM and never block on the guest, so the metrics scrape (and the
E2B-style API's per-sandbox metrics) can call ``read_usage`` for every VM at scrape time. No gRPC.
Memory from ``/proc`` is the resident set (what ``ps`` shows): it counts pages a restored VM shares
with its snapshot's RAM file once each VM touched them; ``smaps_rollup``'s PSS would split those,
but walks every mapping of a 256 MiB+ guest per scrape, which is what a scrape must not do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# VM id -> its cgroup directory (cgroup v2), or None when it has none.
CgroupLocator = Callable[[str], Path | None]
_cgroup_locator: CgroupLocator | None = None


def set_cgroup_locator(locator: CgroupLocator | None) -> None:
    """Where VMs' cgroups are (None: nobody places VMs in cgroups; usage comes from /proc)."""
    global _cgroup_locator
    _cgroup_locator = locator


@dataclass(frozen=True)
class VmUsage:
    cpu_seconds: float
    memory_bytes: int
    source: str  # "cgroup" or "proc": where the numbers came from


def read_usage(vm_id: str, pid: int | None, start_ticks: int | None = None) -> VmUsage | None:
    """The VM's usage from its cgroup if it has one, else from its VMM's ``/proc`` entry; None when
    neither can be read (no VMM, it exited, or its PID now belongs to another process)."""
    if _cgroup_locator is not None:
        cgroup = _cgroup_locator(vm_id)
        if cgroup is not None:
            usage = from_cgroup(cgroup)
            if usage is not None:
                return usage
    return from_proc(pid, start_ticks) if pid is not None else None


def from_cgroup(path: Path) -> VmUsage | None:
    """cgroup v2: ``cpu.stat`` (usage_usec) and ``memory.current``."""
    try:
        cpu_usec = None
        for line in (path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                cpu_usec = int(value)
                break
        memory = int((path / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    if cpu_usec is None:
        return None
    return VmUsage(cpu_usec / 1e6, memory, "cgroup")


def from_proc(pid: int, start_ticks: int | None = None) -> VmUsage | None:
    """``/proc/PID/stat`` (utime + stime, and the start time that tells PID reuse) and ``statm``."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # The command name is in parentheses and may contain anything: the fields follow the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        # Fields counted from 1 in proc(5): state is 3, utime 14, stime 15, starttime 22.
        if start_ticks is not None and int(fields[19]) != start_ticks:
            return None
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        return VmUsage(cpu, resident_pages * _PAGE_SIZE, "proc")
    return None
