"""What reconcile must change, computed from the store's VMs, the allocations and the links present.

Pure: ``plan()`` only compares; ``NetworkManager.reconcile`` carries the plan out. After a crash
(kill -9 mid-create or mid-delete) the three can disagree in every direction:

- an allocation whose VM is not in the store (crash before the VM row was written) -> release it;
- a Clawpot TAP no remaining allocation names (crash before the TAP was deleted) -> delete it;
- a known VM with an allocation but no TAP (crash before it was created, or the host rebooted)
  -> create it, so the server can start the VM again. Every known VM's TAP is re-ensured anyway
  (attached to the bridge, up): a bridge recreated after a crash has lost its ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clawpot.network.config import NetworkConfig
from clawpot.network.ipam import Allocation
from clawpot.network.links import LinkInfo
from clawpot.network.slot import NetworkSlot


@dataclass(frozen=True)
class ReconcilePlan:
    release: tuple[str, ...]
    delete_taps: tuple[str, ...]
    ensure_taps: tuple[NetworkSlot, ...]
    missing_taps: tuple[str, ...]
    # Known VMs without any address: nothing to undo; the server decides (attach again or fail the VM).
    unallocated: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.release or self.delete_taps or self.missing_taps)


def plan(
    config: NetworkConfig,
    allocations: Sequence[Allocation],
    known_vm_ids: Iterable[str],
    taps: Sequence[LinkInfo],
) -> ReconcilePlan:
    known = set(known_vm_ids)
    kept = [a for a in allocations if a.vm_id in known]
    slots = [NetworkSlot.from_allocation(config, a) for a in kept]
    wanted_taps = {s.tap_name for s in slots}
    present = {link.name for link in taps}
    allocated = {a.vm_id for a in allocations}
    return ReconcilePlan(
        release=tuple(sorted(a.vm_id for a in allocations if a.vm_id not in known)),
        delete_taps=tuple(sorted(present - wanted_taps)),
        ensure_taps=tuple(slots),
        missing_taps=tuple(sorted(wanted_taps - present)),
        unallocated=tuple(sorted(known - allocated)),
    )
