"""Admission: may the host take one more VM of this size? Committed guest memory against host memory.

A VM holds memory from the moment its create is accepted until its delete finishes (Starting, Running,
Stopping): its ``memory_mib`` plus the VMM's own overhead (``limits.VM_OVERHEAD_MIB``, measured). The
sum may reach MemTotal x the overcommit ratio (1.0 by default: guests can touch every page they were
given without the host running out). Checked against MemAvailable too, for what others use.

A clone (a VM restored from a snapshot whose memory file it maps copy-on-write: a fork, a pool VM, a
restore of a cold VM's snapshot) holds ``limits.CLONE_CHARGE_MIB`` instead: the pages it has written
and its VMM, measured (bench/snapshot.py (e)); the file's pages are shared with the other clones.

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
    count: int = 1,
    clone: bool = False,
    committed_clones: int = 0,
    clone_mib: int = limits.CLONE_CHARGE_MIB,
) -> None:
    """Raise ``ResourceExhausted`` naming the numbers if ``count`` VMs of ``asked_mib`` do not fit.

    ``committed_mib``: the guest memory of every VM that holds memory now, clones excepted (one entry
    per VM); ``committed_clones``: how many clones hold memory now. ``clone``: the asked VMs are clones.
    """
    capacity = int(host.total_mib * overcommit)
    guests = sum(committed_mib)
    overheads = overhead_mib * len(committed_mib) + clone_mib * committed_clones
    left = max(0, capacity - guests - overheads)
    each = clone_mib if clone else asked_mib + overhead_mib
    if count * each > left:
        vms = len(committed_mib) + committed_clones
        ratio = f"; overcommit {overcommit:g}" if overcommit != 1.0 else ""
        asked = (
            f"{count} clone{'s' if count != 1 else ''} of {asked_mib} MiB asked ({clone_mib} MiB each)"
            if clone
            else f"{asked_mib} MiB asked (+{overhead_mib} MiB VM overhead)"
            + (f" x {count}" if count != 1 else "")
        )
        raise ResourceExhausted(
            f"not enough host memory: {asked}, "
            f"{left} MiB of {capacity} MiB left (committed {guests} + overhead {overheads} "
            f"for {vms} VM{'s' if vms != 1 else ''}{ratio})"
        )
    needed = count * (clone_mib if clone else asked_mib)
    if host.available_mib is not None and needed > host.available_mib:
        raise ResourceExhausted(
            f"not enough host memory: {needed} MiB asked, {host.available_mib} MiB available now"
        )
