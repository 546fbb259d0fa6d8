"""Isolation and NAT with real traffic between namespaces standing in for VMs.

A TAP without a VM carries nothing, so each "guest" is a namespace plugged into the bridge by a veth
pair named like its TAP, with the slot's MAC, address and default route (``plug_guest``); the rules
match port names and addresses, so they treat it exactly as a VM. A "wan" namespace plays the
outside world. All traffic stays inside the namespaces this module creates; waits are bounded.

    guest a (no peers) ─┐                      ┌── wan 10.200.0.2 (the "internet")
    guest b (no peers) ─┤   host namespace     │
    guest c (peers)    ─┼── clawpot-br0 .1 ────┤ wan0 10.200.0.1 (masquerade)
    guest d (peers)    ─┘   also 10.99.0.1 on lo (another host address)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.netns import (
    NetNamespace,
    icmp_echo,
    netns_unavailable_reason,
    plug_guest,
    serve_peer_address,
    stop,
    tcp_exchange,
)

from clawpot.network import NetworkManager, NetworkSlot

GATEWAY = "192.168.100.1"
OTHER_HOST_ADDRESS = "10.99.0.1"
WAN_HOST, WAN_PEER = "10.200.0.1", "10.200.0.2"
BLOCKED = 1.0  # seconds to wait for something that must not arrive


@dataclass
class Lab:
    db: Path
    host: NetNamespace
    wan: NetNamespace
    guests: dict[str, NetNamespace] = field(default_factory=dict)
    slots: dict[str, NetworkSlot] = field(default_factory=dict)

    def addr(self, name: str) -> str:
        return str(self.slots[name].address)


def _attach_all(db: Path) -> dict[str, NetworkSlot]:
    manager = NetworkManager(db)
    manager.setup()
    return {name: manager.attach_vm(f"vm-{name}", allow_peers=name in "cd") for name in "abcd"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    namespaces: list[NetNamespace] = []
    pids: list[int] = []

    def new_ns() -> NetNamespace:
        namespaces.append(NetNamespace.create())
        return namespaces[-1]

    try:
        lab = Lab(db=tmp_path_factory.mktemp("net") / "state.db", host=new_ns(), wan=new_ns())
        lab.slots = lab.host.call(_attach_all, lab.db)
        for name, slot in lab.slots.items():
            lab.guests[name] = new_ns()
            plug_guest(lab.host, lab.guests[name], slot)
        wan_link = f"{lab.wan.name}-w"[-15:]
        lab.host.run(["ip", "link", "add", "wan0", "type", "veth", "peer", "name", wan_link])
        lab.host.run(["ip", "link", "set", wan_link, "netns", lab.wan.name])
        lab.host.run(["ip", "address", "add", f"{WAN_HOST}/24", "dev", "wan0"])
        lab.host.run(["ip", "link", "set", "wan0", "up"])
        lab.host.run(["ip", "address", "add", f"{OTHER_HOST_ADDRESS}/32", "dev", "lo"])
        lab.wan.run(["ip", "address", "add", f"{WAN_PEER}/24", "dev", wan_link])
        lab.wan.run(["ip", "link", "set", wan_link, "up"])
        pids.append(lab.host.spawn(serve_peer_address, [53, 8080]))
        pids.append(lab.wan.spawn(serve_peer_address, [9000]))
        for name in "bd":
            pids.append(lab.guests[name].spawn(serve_peer_address, [7000]))
        yield lab
    finally:
        for pid in pids:
            stop(pid)
        for ns in reversed(namespaces):
            ns.delete()


def test_guest_reaches_the_gateway_for_ping_and_dns_only(lab: Lab) -> None:
    a = lab.guests["a"]
    assert a.call(icmp_echo, GATEWAY)
    assert a.call(tcp_exchange, GATEWAY, 53) == lab.addr("a")  # connected; the host saw a's address
    assert a.call(tcp_exchange, GATEWAY, 8080, BLOCKED) == "EHOSTUNREACH"  # rejected, admin-prohibited
    assert a.call(tcp_exchange, OTHER_HOST_ADDRESS, 8080, BLOCKED) == "EHOSTUNREACH"
    assert a.call(tcp_exchange, OTHER_HOST_ADDRESS, 53, BLOCKED) == "EHOSTUNREACH"  # DNS: gateway only
    assert not a.call(icmp_echo, OTHER_HOST_ADDRESS, BLOCKED)


def test_host_reaches_every_guest(lab: Lab) -> None:
    for name in "abcd":
        assert lab.host.call(icmp_echo, lab.addr(name)), name
    assert lab.host.call(tcp_exchange, lab.addr("b"), 7000) == GATEWAY


def test_guests_are_isolated_unless_both_allow_peers(lab: Lab) -> None:
    a, c, d = lab.guests["a"], lab.guests["c"], lab.guests["d"]
    assert not a.call(icmp_echo, lab.addr("b"), BLOCKED)
    assert a.call(tcp_exchange, lab.addr("b"), 7000, BLOCKED) in ("timeout", "EHOSTUNREACH")
    assert c.call(icmp_echo, lab.addr("d"))
    assert c.call(tcp_exchange, lab.addr("d"), 7000) == lab.addr("c")
    # d allows peers but a does not: no traffic either way.
    assert a.call(tcp_exchange, lab.addr("d"), 7000, BLOCKED) in ("timeout", "EHOSTUNREACH")
    assert not d.call(icmp_echo, lab.addr("a"), BLOCKED)


def test_allow_peers_can_be_switched_while_running(lab: Lab) -> None:
    a = lab.guests["a"]
    lab.host.call(lambda: NetworkManager(lab.db).set_allow_peers("vm-a", True))
    # Neighbour entries that failed while the peers were blocked would fail the next try too.
    for name in "ad":
        lab.guests[name].run(["ip", "neigh", "flush", "dev", "eth0"])
    try:
        assert a.call(tcp_exchange, lab.addr("d"), 7000) == lab.addr("a")
    finally:
        lab.host.call(lambda: NetworkManager(lab.db).set_allow_peers("vm-a", False))
    assert a.call(tcp_exchange, lab.addr("d"), 7000, BLOCKED) in ("timeout", "EHOSTUNREACH")


def test_outbound_traffic_is_masqueraded(lab: Lab) -> None:
    # The outside sees the host's address, not the guest's.
    assert lab.guests["a"].call(tcp_exchange, WAN_PEER, 9000) == WAN_HOST


def test_spoofed_addresses_are_dropped(lab: Lab) -> None:
    a, slot = lab.guests["a"], lab.slots["a"]
    spoofed_ip = lab.addr("b")
    a.run(["ip", "address", "add", f"{spoofed_ip}/32", "dev", "eth0"])
    try:
        assert not a.call(icmp_echo, GATEWAY, BLOCKED, spoofed_ip)
        assert a.call(icmp_echo, GATEWAY, 5.0, lab.addr("a"))
    finally:
        a.run(["ip", "address", "del", f"{spoofed_ip}/32", "dev", "eth0"])
    a.run(["ip", "link", "set", "eth0", "address", "06:00:c0:a8:64:fe"])
    try:
        assert not a.call(icmp_echo, GATEWAY, BLOCKED)
    finally:
        a.run(["ip", "link", "set", "eth0", "address", slot.mac])
    assert a.call(icmp_echo, GATEWAY)
