"""``NetworkManager``: the one object the server uses for networking.

    setup()                         bridge + gateway address + forwarding + rules (idempotent)
    attach_vm(id, ip, allow_peers, policy)  address, TAP, policy, rules -> NetworkSlot (undone on failure)
    detach_vm(id)                   TAP deleted, address, policy and ports freed, rules updated
    set_egress(id, egress)          a running VM's egress policy: stored, its chain rewritten alone
    set_policy(id, policy)          egress and ports replaced on an attached VM (a pool VM handed out)
    pin(id, domain, addresses, ttl) addresses the DNS forwarder answered for an allowed domain
    reconcile(known_vm_ids)         after a crash: store, allocations and links agree again
    teardown()                      Clawpot's tables, TAPs and bridge removed, forwarding restored

Every method acts on the network namespace of the calling process. The rules are re-rendered from
the allocation table under SQLite's write lock after each change, so concurrent servers or threads
can never leave a stale set behind and the last writer always saw every committed allocation.
Pinned DNS answers live in nft sets with timeouts and in memory here (with their expiry), so a full
re-render keeps them with the time they have left.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path

from clawpot import limits
from clawpot.network import policydb, vmrules
from clawpot.network.bridge import (
    delete_bridge,
    ensure_bridge,
    read_ip_forward,
    set_route_localnet,
    write_ip_forward,
)
from clawpot.network.config import NetworkConfig
from clawpot.network.db import Database
from clawpot.network.errors import AllocationError, LinkError, NetworkError
from clawpot.network.firewall import Firewall
from clawpot.network.ipam import Allocation, IpAllocator
from clawpot.network.links import find_link, iproute
from clawpot.network.naming import tap_name_for
from clawpot.network.policy import EgressPolicy, check_host_side
from clawpot.network.policydb import VmNetworkPolicy
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
        # One nft change at a time: a pin must not land between a full render and its apply.
        self._rules_lock = threading.RLock()
        # What the last sync saw, for the DNS forwarder's per-query lookups (no SQLite on that path).
        self._policies: dict[str, VmNetworkPolicy] = {}
        self._by_address: dict[str, str] = {}
        # vm_id -> pinned address -> (monotonic expiry, the domain whose answer it was).
        self._pins: dict[str, dict[str, tuple[float, str]]] = {}

    # -- host side --------------------------------------------------------------------------------

    def setup(self) -> None:
        """Bridge, gateway address, IPv4 forwarding and rules; safe to call again at any time."""
        _ = self.firewall.nft  # fail on a missing nft before changing anything
        with iproute() as ipr:
            ensure_bridge(ipr, self.config)
        # Published ports on 127.0.0.1 are DNATed out of the bridge: the kernel routes a loopback
        # source there only with route_localnet (docs/networking.md: why this is safe here).
        set_route_localnet(self.config.bridge)
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
        """Re-render and atomically apply the ruleset from the allocation and policy tables."""
        with self.db.write() as conn, self._rules_lock:
            allocations = self.allocator.allocations(conn)
            policies = policydb.load_all(self.db, conn)
            slots = [NetworkSlot.from_allocation(self.config, a) for a in allocations]
            live = {s.vm_id for s in slots}
            self._pins = {vm: p for vm, p in self._pins.items() if vm in live}
            self.firewall.apply(slots, policies, {vm: self._pins_left(vm) for vm in live})
            self._policies = policies
            self._by_address = {str(s.address): s.vm_id for s in slots}

    def _pins_left(self, vm_id: str) -> dict[str, int]:
        """The VM's pinned addresses with the whole seconds they have left (expired ones dropped)."""
        now = time.monotonic()
        pins = self._pins.get(vm_id, {})
        for address in [a for a, (expiry, _) in pins.items() if expiry - now < 1]:
            del pins[address]
        return {a: int(expiry - now) for a, (expiry, _) in pins.items()}

    # -- per VM -----------------------------------------------------------------------------------

    def attach_vm(
        self,
        vm_id: str,
        requested_ip: str | IPv4Address | None = None,
        *,
        allow_peers: bool = False,
        policy: VmNetworkPolicy | None = None,
    ) -> NetworkSlot:
        """Give the VM an address, a TAP on the bridge and its policy (None: keep the stored one); on
        any failure nothing new is left behind (``PortInUse`` for a published port already taken).

        Repeating it for an attached VM returns the same slot (and applies a changed ``allow_peers``).
        """
        previous = self.allocator.lookup(vm_id)
        allocation = self.allocator.allocate(vm_id, requested_ip, allow_peers=allow_peers)
        slot = NetworkSlot.from_allocation(self.config, allocation)
        tap_created = False
        try:
            if policy is not None:
                for port in policy.ports:
                    check_host_side(port)
                with self.db.write() as conn:
                    policydb.put(conn, vm_id, policy)
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
                    with self.db.write() as conn:
                        policydb.remove(conn, vm_id)
                    self.allocator.release(vm_id)
            raise
        return slot

    def detach_vm(self, vm_id: str) -> Allocation | None:
        """Delete the VM's TAP and free its address; returns the freed allocation (None if it had none)."""
        with iproute() as ipr:
            delete_tap(ipr, tap_name_for(vm_id, self.config.tap_prefix))
        with self.db.write() as conn:
            policydb.remove(conn, vm_id)
        released = self.allocator.release(vm_id)
        self.sync_rules()
        return released

    # -- egress policy and DNS pins ---------------------------------------------------------------

    def policy(self, vm_id: str) -> VmNetworkPolicy:
        """The VM's policy as last synced (the default one for a VM without rows)."""
        return self._policies.get(vm_id, VmNetworkPolicy())

    def vm_at(self, address: str) -> tuple[str, EgressPolicy] | None:
        """The VM using guest ``address`` and its egress policy (the DNS forwarder asks per query)."""
        vm_id = self._by_address.get(address)
        return None if vm_id is None else (vm_id, self.policy(vm_id).egress)

    def set_egress(self, vm_id: str, egress: EgressPolicy) -> VmNetworkPolicy:
        """Store the VM's new egress policy and rewrite its chain and sets in one transaction.

        Pins of domains the new policy no longer allows are dropped with the old set. Raises
        ``AllocationError`` for a VM without an address."""
        slot = self.slot(vm_id)
        if slot is None:
            raise AllocationError(f"VM {vm_id} has no network address")
        with self.db.write() as conn, self._rules_lock:
            policydb.set_egress(conn, vm_id, egress)
            # Pins stay only for domains the new policy still allows.
            kept = {a: pin for a, pin in self._pins.get(vm_id, {}).items() if egress.pins(pin[1])}
            self._pins[vm_id] = kept
            script = vmrules.render_update(self.config, slot, egress, self._pins_left(vm_id))
            try:
                self.firewall.update(script, f"update the egress rules of VM {vm_id}")
            except NetworkError:
                # Its chain is missing or differs (another server's render?): the whole ruleset, then.
                self.firewall.apply(
                    [NetworkSlot.from_allocation(self.config, a) for a in self.allocator.allocations(conn)],
                    {**policydb.load_all(self.db, conn)},
                    {vm: self._pins_left(vm) for vm in self._pins},
                )
            current = self._policies.get(vm_id, VmNetworkPolicy())
            self._policies[vm_id] = VmNetworkPolicy(egress, current.ports)
        return self._policies[vm_id]

    def set_policy(self, vm_id: str, policy: VmNetworkPolicy) -> VmNetworkPolicy:
        """Replace an attached VM's whole policy, ports included (e.g. a pool VM handed out with the
        create's policy): checked like ``attach_vm``'s, then the ruleset re-rendered (ports change the
        shared ``publish`` map). On ``PortInUse`` or ``PolicyError`` nothing changes."""
        if self.allocator.lookup(vm_id) is None:
            raise AllocationError(f"VM {vm_id} has no network address")
        current = self.policy(vm_id).ports
        for port in policy.ports:
            if port not in current:
                check_host_side(port)
        with self.db.write() as conn:
            policydb.put(conn, vm_id, policy)
        self.sync_rules()
        return self.policy(vm_id)

    def pin(self, vm_id: str, domain: str, addresses: Iterable[str], ttl: int) -> None:
        """Allow the VM to reach ``addresses`` (answered for ``domain``) for ``ttl`` seconds."""
        slot = self.slot_cached(vm_id)
        if slot is None:
            return
        with self._rules_lock:
            # An address pinned with nearly this long left needs no nft transaction (each costs tens of
            # ms, bench/egress_rules.py): a guest resolving a name before every connection stays cheap.
            current = self._pins.get(vm_id, {})
            fresh_until = time.monotonic() + ttl - limits.DNS_PIN_REFRESH_SLACK
            items = sorted(a for a in set(addresses) if a not in current or current[a][0] < fresh_until)
            if not items:
                return
            self.firewall.update(
                vmrules.render_pin(self.config, slot, items, ttl), f"pin DNS answers for VM {vm_id}"
            )
            expiry = time.monotonic() + ttl
            self._pins.setdefault(vm_id, {}).update(dict.fromkeys(items, (expiry, domain)))

    def slot_cached(self, vm_id: str) -> NetworkSlot | None:
        """The VM's slot from the last sync's addresses (no SQLite: the DNS path calls it)."""
        address = next((a for a, v in self._by_address.items() if v == vm_id), None)
        if address is None:
            return None
        return NetworkSlot.derive(self.config, vm_id, IPv4Address(address))

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
        with self.db.write() as conn:
            known = {a.vm_id for a in self.allocator.allocations(conn)}
            for vm_id in set(policydb.load_all(self.db, conn)) - known:
                policydb.remove(conn, vm_id)
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
