"""Per-VM egress rules and published ports in real nftables, without VMs: each test in its own
namespace, the manager driven in a child forked into it (its in-memory pins live there).

What guests can then reach is shown with real VMs in test_egress.py; here: a policy change rewrites
one VM's chain and sets only, pins survive a full re-render but not a policy that drops their domain,
a port published twice (or on an address the host lacks, or held by a host process) is refused with
nothing left behind, and reconcile forgets dead VMs' policies.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.netns import NetNamespace, netns_unavailable_reason, nft_set

from clawpot.network import NetworkManager, PortInUse
from clawpot.network.policy import EgressPolicy, PolicyError, parse_ports
from clawpot.network.policydb import VmNetworkPolicy
from clawpot.network.vmrules import key


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    namespace = NetNamespace.create()
    try:
        yield namespace
    finally:
        namespace.delete()


def chain(ns: NetNamespace, name: str) -> list[Any]:
    items = json.loads(ns.run(["nft", "-j", "list", "chain", "inet", "clawpot", name]).stdout)["nftables"]
    return [i["rule"]["expr"] for i in items if "rule" in i]


def pinned(ns: NetNamespace, set_name: str) -> list[str]:
    return sorted(
        e["elem"]["val"] if isinstance(e, dict) else e for e in nft_set(ns, "inet", "clawpot", set_name)
    )


def test_policy_changes_and_pins_touch_one_vm_only(ns: NetNamespace, tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    def scenario() -> dict[str, Any]:
        manager = NetworkManager(db)
        manager.setup()
        a = manager.attach_vm("vm-a")
        b = manager.attach_vm("vm-b", policy=VmNetworkPolicy(EgressPolicy.parse(["pinned.test"])))
        manager.pin("vm-b", "pinned.test.", ["10.1.1.1"], 300)
        manager.pin("vm-a", "any.test.", ["10.2.2.2"], 300)
        manager.set_egress("vm-a", EgressPolicy.parse(["10.77.0.0/24", "a.test"], ["10.77.0.3"]))
        seen: dict[str, Any] = {"after_a": (pinned(ns, f"pin_{key(a)}"), pinned(ns, f"pin_{key(b)}"))}
        seen["chain_a"] = chain(ns, f"egress_{key(a)}")
        seen["allow_a"] = nft_set(ns, "inet", "clawpot", f"allow_{key(a)}")
        manager.attach_vm("vm-c")  # a full re-render: pins must survive it
        seen["after_attach"] = pinned(ns, f"pin_{key(b)}")
        manager.set_egress("vm-b", EgressPolicy.parse(["other.test"]))  # pinned.test no longer allowed
        seen["after_b"] = pinned(ns, f"pin_{key(b)}")
        manager.set_egress("vm-a", EgressPolicy(no_internet=True))
        seen["sealed_a"] = chain(ns, f"egress_{key(a)}")
        seen["stored"] = manager.policy("vm-a").egress.no_internet
        return seen

    seen = ns.call(scenario)
    # vm-a's new policy does not cover any.test: that pin went with the change; vm-b kept its own.
    assert seen["after_a"] == ([], ["10.1.1.1"]), seen
    assert [list(rule[-1]) for rule in seen["chain_a"]] == [["drop"], ["accept"], ["accept"], ["drop"]]
    assert seen["allow_a"] == [{"prefix": {"addr": "10.77.0.0", "len": 24}}], seen
    assert seen["after_attach"] == ["10.1.1.1"]
    assert seen["after_b"] == []
    assert seen["sealed_a"] == [[{"drop": None}]] and seen["stored"]


def test_a_port_published_twice_is_refused_with_nothing_left(ns: NetNamespace, tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    def scenario() -> tuple[str, list[str], int, list[str]]:
        manager = NetworkManager(db)
        manager.setup()
        manager.attach_vm("vm-a", policy=VmNetworkPolicy(ports=parse_ports(["8080:80", "53:53/udp"])))
        try:
            manager.attach_vm("vm-b", policy=VmNetworkPolicy(ports=parse_ports(["9090:90", "8080:81"])))
        except PortInUse as exc:
            error = str(exc)
        else:
            error = ""
        # Checked on the host side too: an address the host does not have, a port a host process holds.
        for spec in ("10.99.0.1:7000:80", "7001:80"):
            try:
                with socket.socket() as listener:
                    listener.bind(("127.0.0.1", 7001))
                    listener.listen()
                    manager.attach_vm("vm-c", policy=VmNetworkPolicy(ports=parse_ports([spec])))
            except (PolicyError, PortInUse) as exc:
                error += f" | {type(exc).__name__}: {exc}"
        with manager.db.read() as conn:
            rows = conn.execute("SELECT COUNT(*) FROM port_forwards").fetchone()[0]
        return error, [s.vm_id for s in manager.slots()], rows, sorted(manager.policy("vm-a").ports)

    error, vms, rows, ports = ns.call(scenario)
    assert "127.0.0.1:8080/tcp is already published by VM vm-a" in error
    assert "PolicyError: --publish 10.99.0.1:7000:80/tcp: 10.99.0.1 is not an address of this host" in error
    assert "PortInUse: --publish 127.0.0.1:7001:80/tcp: a host process already listens there" in error
    assert vms == ["vm-a"] and rows == 2 and len(ports) == 2
    publish = ns.run(["nft", "list", "map", "inet", "clawpot", "publish"]).stdout
    assert "8080" in publish and "9090" not in publish
    assert len([link for link in ns.ip_json("link", "show") if link["ifname"].startswith("cp-")]) == 1


def test_reconcile_forgets_policies_of_vms_that_are_gone(ns: NetNamespace, tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    def scenario() -> tuple[bool, list[str]]:
        manager = NetworkManager(db)
        manager.setup()
        for vm, port in (("vm-a", "1000:80"), ("vm-b", "2000:80")):
            manager.attach_vm(vm, policy=VmNetworkPolicy(EgressPolicy(no_internet=True), parse_ports([port])))
        manager = NetworkManager(db)  # a restart: only vm-a survived it
        manager.reconcile(["vm-a"])
        with manager.db.read() as conn:
            rows = conn.execute("SELECT vm_id FROM egress_policies UNION SELECT vm_id FROM port_forwards")
            owners = sorted(str(row[0]) for row in rows)
        return manager.policy("vm-a").egress.no_internet, owners

    kept, owners = ns.call(scenario)
    assert kept and owners == ["vm-a"]


def test_a_pool_vm_takes_its_policy_when_handed_out(ns: NetNamespace, tmp_path: Path) -> None:
    """A VM attached without a policy (a warm pool) gets the create's egress and ports later."""
    db = tmp_path / "state.db"

    def scenario() -> tuple[list[Any], bool]:
        manager = NetworkManager(db)
        manager.setup()
        slot = manager.attach_vm("pool-1")
        policy = VmNetworkPolicy(EgressPolicy(no_internet=True), parse_ports(["8080:80"]))
        manager.set_policy("pool-1", policy)
        return chain(ns, f"egress_{key(slot)}"), manager.policy("pool-1") == policy

    rules, stored = ns.call(scenario)
    assert rules == [[{"drop": None}]] and stored
    assert "127.0.0.1 . tcp . 8080" in ns.run(["nft", "list", "map", "inet", "clawpot", "publish"]).stdout
