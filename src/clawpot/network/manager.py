"""``NetworkManager``: the one object the server uses for networking.

    setup()                         bridge + gateway address + forwarding + rules (idempotent)
    attach_vm(id, ip, allow_peers)  address, TAP, rules -> NetworkSlot (undone on failure)
    detach_vm(id)                   TAP deleted, address freed, rules updated
    reconcile(known_vm_ids)         after a crash: store, allocations and links agree again
    teardown()                      Clawpot's tables, TAPs and bridge removed, forwarding restored

Every method acts on the network namespace of the calling process. The rules are re-rendered from
the allocation table under SQLite's write lock after each change, so concurrent servers or threads
can never leave a stale set behind and the last writer always saw every committed allocation.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path

from clawpot.network.bridge import delete_bridge, ensure_bridge, read_ip_forward, write_ip_forward
from clawpot.network.config import NetworkConfig
from clawpot.network.db import Database
from clawpot.network.errors import LinkError, NetworkError
from clawpot.network.firewall import Firewall
from clawpot.network.ipam import Allocation, IpAllocator
from clawpot.network.links import find_link, iproute
from clawpot.network.naming import tap_name_for
from clawpot.network.reconcile import ReconcilePlan, plan
from clawpot.network.slot import NetworkSlot
from clawpot.network.tap import clawpot_taps, delete_tap, ensure_tap

_IP_FORWARD_KEY = "ip_forward_before"


class NetworkManager:
    def __init__(
        self,
        db: Path | str | sqlite3.Connection | Database,
        config: NetworkConfig | None = None,
        *,
        nft: str | None = None,
    ) -> None:
        self.config = config or NetworkConfig()
        self.db = db if isinstance(db, Database) else Database(db)
        self.allocator = IpAllocator(self.db, self.config)
        self.firewall = Firewall(self.config, nft)

    # -- host side --------------------------------------------------------------------------------

    def setup(self) -> None:
        """Bridge, gateway address, IPv4 forwarding and rules; safe to call again at any time."""
        _ = self.firewall.nft  # fail on a missing nft before changing anything
        with iproute() as ipr:
            ensure_bridge(ipr, self.config)
        self._enable_forwarding()
        self.sync_rules()

    def _enable_forwarding(self) -> None:
        with self.db.write() as conn:
            current = read_ip_forward()
            if current == "1":
                return
            # Remember the value from before the first setup only; a restart after a crash finds it.
            conn.execute(
                "INSERT OR IGNORE INTO network_state (key, value) VALUES (?, ?)", (_IP_FORWARD_KEY, current)
            )
            write_ip_forward("1")

    def teardown(self) -> None:
        """Remove Clawpot's tables, TAPs and bridge; restore ip_forward. Allocations stay in the store."""
        with self.db.write() as conn:
            self.firewall.remove()
            with iproute() as ipr:
                for link in clawpot_taps(ipr, self.config):
                    delete_tap(ipr, link.name)
                delete_bridge(ipr, self.config)
            row = conn.execute("SELECT value FROM network_state WHERE key = ?", (_IP_FORWARD_KEY,)).fetchone()
            if row is not None:
                if self.config.restore_ip_forward:
                    write_ip_forward(str(row[0]))
                conn.execute("DELETE FROM network_state WHERE key = ?", (_IP_FORWARD_KEY,))

    def sync_rules(self) -> None:
        """Re-render and atomically apply the ruleset from the allocation table."""
        with self.db.write() as conn:
            allocations = self.allocator.allocations(conn)
            self.firewall.apply([NetworkSlot.from_allocation(self.config, a) for a in allocations])

    # -- per VM -----------------------------------------------------------------------------------

    def attach_vm(
        self, vm_id: str, requested_ip: str | IPv4Address | None = None, *, allow_peers: bool = False
    ) -> NetworkSlot:
        """Give the VM an address and a TAP on the bridge; on any failure nothing new is left behind.

        Repeating it for an attached VM returns the same slot (and applies a changed ``allow_peers``).
        """
        previous = self.allocator.lookup(vm_id)
        allocation = self.allocator.allocate(vm_id, requested_ip, allow_peers=allow_peers)
        slot = NetworkSlot.from_allocation(self.config, allocation)
        tap_created = False
        try:
            with iproute() as ipr:
                bridge = find_link(ipr, self.config.bridge)
                if bridge is None:
                    raise LinkError(f"bridge {self.config.bridge} does not exist: call setup() first")
                tap_created = find_link(ipr, slot.tap_name) is None
                ensure_tap(ipr, self.config, slot.tap_name, bridge.index, vm_id)
            self.sync_rules()
        except BaseException:
            # Undo what this call added; an undo failing must not hide the error that caused it.
            if tap_created:
                with contextlib.suppress(NetworkError), iproute() as ipr:
                    delete_tap(ipr, slot.tap_name)
            if previous is None:
                with contextlib.suppress(NetworkError, sqlite3.Error):
                    self.allocator.release(vm_id)
            raise
        return slot

    def detach_vm(self, vm_id: str) -> Allocation | None:
        """Delete the VM's TAP and free its address; returns the freed allocation (None if it had none)."""
        with iproute() as ipr:
            delete_tap(ipr, tap_name_for(vm_id, self.config.tap_prefix))
        released = self.allocator.release(vm_id)
        self.sync_rules()
        return released

    def set_allow_peers(self, vm_id: str, allow: bool) -> NetworkSlot | None:
        allocation = self.allocator.set_allow_peers(vm_id, allow)
        self.sync_rules()
        return None if allocation is None else NetworkSlot.from_allocation(self.config, allocation)

    def slot(self, vm_id: str) -> NetworkSlot | None:
        allocation = self.allocator.lookup(vm_id)
        return None if allocation is None else NetworkSlot.from_allocation(self.config, allocation)

    def slots(self) -> list[NetworkSlot]:
        return [NetworkSlot.from_allocation(self.config, a) for a in self.allocator.allocations()]

    # -- after a crash ----------------------------------------------------------------------------

    def reconcile(self, known_vm_ids: Iterable[str]) -> ReconcilePlan:
        """Make links, allocations and rules agree with the VMs the store knows; returns what changed.

        Call at server start, before serving. Includes ``setup()``.
        """
        self.setup()
        with iproute() as ipr:
            taps = clawpot_taps(ipr, self.config)
        todo = plan(self.config, self.allocator.allocations(), known_vm_ids, taps)
        for vm_id in todo.release:
            self.allocator.release(vm_id)
        with iproute() as ipr:
            for name in todo.delete_taps:
                delete_tap(ipr, name)
            bridge = find_link(ipr, self.config.bridge)
            if bridge is None:
                raise LinkError(f"bridge {self.config.bridge} disappeared during reconcile")
            for slot in todo.ensure_taps:
                ensure_tap(ipr, self.config, slot.tap_name, bridge.index, slot.vm_id)
        self.sync_rules()
        return todo
