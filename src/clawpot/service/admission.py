"""Admission: may the host take one more VM of this size? Committed guest memory against host memory.

A VM holds memory from the moment its create is accepted until its delete finishes (Starting, Running,
Stopping): its ``memory_mib`` plus the VMM's own overhead (``limits.VM_OVERHEAD_MIB``, measured). The
sum may reach MemTotal x the overcommit ratio (1.0 by default: guests can touch every page they were
given without the host running out). Checked against MemAvailable too, for what others use.

Pure arithmetic: the manager calls ``check`` and records the new VM with no ``await`` in between, so
two concurrent creates can never both take the last free memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clawpot import limits
from clawpot.errors import ResourceExhausted


@dataclass(frozen=True)
class HostMemory:
    total_mib: int  # MemTotal
    available_mib: int | None  # MemAvailable (None where /proc/meminfo has none)


def check(
    asked_mib: int,
    committed_mib: Sequence[int],
    host: HostMemory,
    *,
    overcommit: float = limits.DEFAULT_MEMORY_OVERCOMMIT,
    overhead_mib: int = limits.VM_OVERHEAD_MIB,
) -> None:
    """Raise ``ResourceExhausted`` naming the numbers if a VM of ``asked_mib`` does not fit.

    ``committed_mib``: the guest memory of every VM that holds memory now (one entry per VM).
    """
    capacity = int(host.total_mib * overcommit)
    guests = sum(committed_mib)
    overheads = overhead_mib * len(committed_mib)
    left = max(0, capacity - guests - overheads)
    if asked_mib + overhead_mib > left:
        vms = len(committed_mib)
        ratio = f"; overcommit {overcommit:g}" if overcommit != 1.0 else ""
        raise ResourceExhausted(
            f"not enough host memory: {asked_mib} MiB asked (+{overhead_mib} MiB VM overhead), "
            f"{left} MiB of {capacity} MiB left (committed {guests} + overhead {overheads} "
            f"for {vms} VM{'s' if vms != 1 else ''}{ratio})"
        )
    if host.available_mib is not None and asked_mib > host.available_mib:
        raise ResourceExhausted(
            f"not enough host memory: {asked_mib} MiB asked, {host.available_mib} MiB available now"
        )
