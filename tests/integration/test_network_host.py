"""Bridge, forwarding, rules and TAPs for real, each test inside its own network namespace.

Nothing here touches the host's network: ``NetNamespace`` creates ``clawpot-test-<random>`` and the
code under test runs in a child forked into it; the finalizer kills what runs inside and deletes it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.netns import (
    NetNamespace,
    netns_unavailable_reason,
    nft_rules,
    nft_set,
    snapshot,
)

from clawpot.network import (
    AddressInUse,
    AddressPoolExhausted,
    LinkError,
    NetworkConfig,
    NetworkManager,
    NetworkSlot,
    ToolMissing,
)
from clawpot.network.links import iproute
from clawpot.network.tap import clawpot_taps

ROOT_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    before = ROOT_IP_FORWARD.read_text()
    namespace = NetNamespace.create()
    try:
        yield namespace
    finally:
        namespace.delete()
    assert not namespace.exists()
    assert ROOT_IP_FORWARD.read_text() == before, "the host's own namespace was changed"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def tap_names(config: NetworkConfig) -> list[str]:
    with iproute() as ipr:
        return sorted(link.name for link in clawpot_taps(ipr, config))


def test_setup_is_idempotent_bridge_address_forwarding_rules(ns: NetNamespace, db: Path) -> None:
    ns.call(lambda: NetworkManager(db).setup())
    first = snapshot(ns)
    rules_first = nft_rules(ns, "inet", "clawpot") + nft_rules(ns, "bridge", "clawpot")

    def setup_twice() -> None:
        NetworkManager(db).setup()
        NetworkManager(db).setup()

    ns.call(setup_twice)
    second = snapshot(ns)

    assert second == first
    assert nft_rules(ns, "inet", "clawpot") + nft_rules(ns, "bridge", "clawpot") == rules_first
    # 1 prerouting (127/8) + 2 dnat (publish) + 4 input + 10 forward + 2 nat + 5 bridge prerouting + 3 bridge
    # forward (no VM: no egress chain)
    assert len(rules_first) == 27
    tables = [item["table"] for item in second["nft"] if "table" in item]
    assert sorted((t["family"], t["name"]) for t in tables) == [("bridge", "clawpot"), ("inet", "clawpot")]

    (bridge,) = [link for link in second["links"] if link["ifname"] == "clawpot-br0"]
    assert bridge["address"] == "06:00:c0:a8:64:01" and "UP" in bridge["flags"]
    (info,) = [a for a in second["addresses"] if a["ifname"] == "clawpot-br0"]
    v4 = [(a["local"], a["prefixlen"]) for a in info["addr_info"] if a["family"] == "inet"]
    assert v4 == [("192.168.100.1", 24)]
    assert second["ip_forward"] == "1"


def test_tap_created_attached_and_deleted(ns: NetNamespace, db: Path) -> None:
    config = NetworkConfig()

    def attach() -> tuple[NetworkSlot, NetworkSlot]:
        manager = NetworkManager(db, config)
        manager.setup()
        return manager.attach_vm("vm-1"), manager.attach_vm("vm-2", "192.168.100.77", allow_peers=True)

    one, two = ns.call(attach)
    assert (str(one.address), str(two.address)) == ("192.168.100.2", "192.168.100.77")
    for slot in (one, two):
        (link,) = ns.ip_json("-d", "link", "show", slot.tap_name)
        assert link["master"] == "clawpot-br0" and link["ifalias"] == f"clawpot:{slot.vm_id}"
        assert link["linkinfo"]["info_kind"] == "tun" and link["linkinfo"]["info_data"]["type"] == "tap"
    assert sorted(nft_set(ns, "bridge", "clawpot", "ports")) == sorted([one.tap_name, two.tap_name])
    assert nft_set(ns, "bridge", "clawpot", "peers") == [two.tap_name]

    # Repeating attach returns the same slot; a taken address is refused and leaves nothing behind.
    assert ns.call(lambda: NetworkManager(db, config).attach_vm("vm-1")) == one
    with pytest.raises(AddressInUse, match="vm-2"):
        ns.call(lambda: NetworkManager(db, config).attach_vm("vm-3", "192.168.100.77"))
    assert ns.call(tap_names, config) == sorted([one.tap_name, two.tap_name])

    freed = ns.call(lambda: NetworkManager(db, config).detach_vm("vm-1"))
    assert freed is not None and freed.address == one.address
    assert ns.ip_json("link", "show") and not [
        link for link in ns.ip_json("link", "show") if link["ifname"] == one.tap_name
    ]
    assert nft_set(ns, "bridge", "clawpot", "ports") == [two.tap_name]
    assert ns.call(lambda: NetworkManager(db, config).slot("vm-1")) is None
    assert ns.call(lambda: NetworkManager(db, config).detach_vm("vm-1")) is None  # idempotent


def test_attach_before_setup_fails_cleanly(ns: NetNamespace, db: Path) -> None:
    with pytest.raises(LinkError, match="call setup"):
        ns.call(lambda: NetworkManager(db).attach_vm("vm-1"))
    assert ns.call(lambda: NetworkManager(db).slots()) == []
    assert [link["ifname"] for link in ns.ip_json("link", "show")] == ["lo"]


def test_attach_failing_half_way_leaves_nothing_behind(ns: NetNamespace, db: Path) -> None:
    ns.call(lambda: NetworkManager(db).setup())
    # The TAP gets created, then applying the rules fails: both the TAP and the address are undone.
    with pytest.raises(ToolMissing, match="nftables"):
        ns.call(lambda: NetworkManager(db, nft="/nonexistent/nft").attach_vm("vm-1"))
    assert ns.call(lambda: NetworkManager(db).slots()) == []
    assert ns.call(tap_names, NetworkConfig()) == []
    assert nft_set(ns, "bridge", "clawpot", "ports") == []


def test_exhausting_a_slash_29_raises_and_leaks_nothing(ns: NetNamespace, db: Path) -> None:
    config = NetworkConfig.build(subnet="10.77.0.0/29")

    def fill() -> list[str]:
        manager = NetworkManager(db, config)
        manager.setup()
        return [str(manager.attach_vm(f"vm-{i}").address) for i in range(5)]

    assert ns.call(fill) == [f"10.77.0.{i}" for i in range(2, 7)]
    with pytest.raises(AddressPoolExhausted, match=r"10\.77\.0\.0/29"):
        ns.call(lambda: NetworkManager(db, config).attach_vm("vm-5"))
    slots = ns.call(lambda: NetworkManager(db, config).slots())
    assert [s.vm_id for s in slots] == [f"vm-{i}" for i in range(5)]
    assert ns.call(tap_names, config) == sorted(s.tap_name for s in slots)
    assert len(nft_set(ns, "bridge", "clawpot", "ports")) == 5


def test_teardown_removes_clawpots_state_and_nothing_else(ns: NetNamespace, db: Path) -> None:
    # Someone else's state in the namespace: a link with an address, a table, forwarding off.
    ns.run(["ip", "link", "add", "keep0", "type", "veth", "peer", "name", "keep1"])
    ns.run(["ip", "address", "add", "10.250.0.1/24", "dev", "keep0"])
    ns.run(["ip", "link", "set", "keep0", "up"])
    ns.run(["nft", "add table inet other; add chain inet other input { type filter hook input priority 0; }"])
    ns.run(["nft", "add rule inet other input tcp dport 22 accept"])
    before = snapshot(ns)
    assert before["ip_forward"] == "0"

    def lifecycle() -> None:
        manager = NetworkManager(db)
        manager.setup()
        for i in range(3):
            manager.attach_vm(f"vm-{i}")
        manager.detach_vm("vm-1")
        manager.teardown()

    ns.call(lifecycle)
    assert snapshot(ns) == before
    # The store keeps the VMs' addresses for the next start; a second teardown is harmless.
    assert [s.vm_id for s in ns.call(lambda: NetworkManager(db).slots())] == ["vm-0", "vm-2"]
    ns.call(lambda: NetworkManager(db).teardown())
    assert snapshot(ns) == before


def test_qemu_opens_the_tap(ns: NetNamespace, db: Path, qemu_bin: Path) -> None:
    """The real VMM can open the TAP we created (paused QEMU, no guest: only the netdev matters)."""

    def attach() -> NetworkSlot:
        manager = NetworkManager(db)
        manager.setup()
        return manager.attach_vm("vm-q")

    slot = ns.call(attach)
    assert "NO-CARRIER" in ns.ip_json("link", "show", slot.tap_name)[0]["flags"]
    qemu = ns.popen(
        [str(qemu_bin), "-M", "microvm", "-nodefaults", "-display", "none", "-S",
         "-netdev", f"tap,id=n0,ifname={slot.tap_name},script=no,downscript=no",
         "-device", f"virtio-net-device,netdev=n0,mac={slot.mac}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        flags: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and qemu.poll() is None:
            flags = ns.ip_json("link", "show", slot.tap_name)[0]["flags"]
            if "LOWER_UP" in flags:
                break
            time.sleep(0.1)
        assert "LOWER_UP" in flags, f"QEMU did not attach to {slot.tap_name}: {qemu.poll()=}"
    finally:
        qemu.kill()
        _, err = qemu.communicate(timeout=30)
    assert "could not" not in err.lower(), err


def test_firecracker_opens_the_tap(ns: NetNamespace, db: Path, tmp_path: Path, firecracker_bin: Path) -> None:
    """Firecracker opens the TAP when its network interface is configured (no guest is booted)."""

    def attach() -> NetworkSlot:
        manager = NetworkManager(db)
        manager.setup()
        return manager.attach_vm("vm-fc")

    slot = ns.call(attach)
    sock = tmp_path / "fc.sock"
    fc = ns.popen(
        [str(firecracker_bin), "--api-sock", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline and fc.poll() is None:
            time.sleep(0.05)
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://fc", timeout=10
        ) as api:
            reply = api.put(
                "/network-interfaces/eth0",
                json={"iface_id": "eth0", "host_dev_name": slot.tap_name, "guest_mac": slot.mac},
            )
        assert reply.status_code == 204, reply.text
        assert "LOWER_UP" in ns.ip_json("link", "show", slot.tap_name)[0]["flags"]
    finally:
        fc.kill()
        fc.communicate(timeout=30)


def test_setup_without_nft_changes_nothing(ns: NetNamespace, db: Path) -> None:
    before = snapshot(ns)
    with pytest.raises(ToolMissing, match="install the nftables package"):
        ns.call(lambda: NetworkManager(db, nft="/nonexistent/nft").setup())
    assert snapshot(ns) == before
