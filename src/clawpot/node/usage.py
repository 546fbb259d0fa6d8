"""What a VM costs the host right now: CPU seconds used so far and memory held, read from the kernel.

From the VM's cgroup where it has one (the VMM and every thread or helper it started): cgroup v2's
``cpu.stat`` ``usage_usec`` and ``memory.current``, or v1's ``cpuacct.usage`` and
``memory.usage_in_bytes`` (hosts with v1 controllers, like this project's build machine, mount cpu and
memory as separate v1 hierarchies: a VM then has one directory in each). Else from its VMM process in
``/proc`` (``stat``: utime + stime, and rss). A VM gets a cgroup from whoever places it
in one: ``set_cgroup_locator`` is the seam (the jail's placement registers a function from VM id to
the VM's cgroup directories).

Reads are a few small files per VM and never block on the guest, so the metrics scrape (and the
E2B-style API's per-sandbox metrics) can call ``read_usage`` for every VM at scrape time. No gRPC.
Memory from ``/proc`` is the resident set (what ``ps`` shows): it counts pages a restored VM shares
with its snapshot's RAM file once each VM touched them; ``smaps_rollup``'s PSS would split those,
but walks every mapping of a 256 MiB+ guest per scrape, which is what a scrape must not do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# VM id -> its cgroup directories (one for v2; one per v1 hierarchy), empty when it has none.
CgroupLocator = Callable[[str], Sequence[Path]]
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
        cgroups = _cgroup_locator(vm_id)
        if cgroups:
            usage = from_cgroup(*cgroups)
            if usage is not None:
                return usage
    return from_proc(pid, start_ticks) if pid is not None else None


def from_cgroup(*directories: Path) -> VmUsage | None:
    """CPU and memory from the VM's cgroup directories: v2 files first, then v1's; None unless both
    numbers are found."""
    cpu: float | None = None
    memory: int | None = None
    for path in directories:
        if cpu is None:
            cpu = _v2_cpu(path)
        if cpu is None:
            cpu = _int_file(path / "cpuacct.usage", scale=1e-9)
        if memory is None:
            memory = _int(path / "memory.current") or _int(path / "memory.usage_in_bytes")
    if cpu is None or memory is None:
        return None
    return VmUsage(cpu, memory, "cgroup")


def _v2_cpu(path: Path) -> float | None:
    try:
        for line in (path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        pass
    return None


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _int_file(path: Path, scale: float) -> float | None:
    value = _int(path)
    return None if value is None else value * scale


def from_proc(pid: int, start_ticks: int | None = None) -> VmUsage | None:
    """``/proc/PID/stat`` alone: utime + stime, rss (the same resident count ``statm`` and ``status``
    show) and the start time that tells PID reuse. One small read per VM."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # The command name is in parentheses and may contain anything: the fields follow the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        # Fields counted from 1 in proc(5): state is 3 (index 0 here), utime 14, stime 15,
        # starttime 22, rss 24 (pages).
        if start_ticks is not None and int(fields[19]) != start_ticks:
            return None
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return VmUsage(cpu, int(fields[21]) * _PAGE_SIZE, "proc")
    return None
