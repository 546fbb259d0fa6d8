"""Guest identity through the agent's ``configure``, on real QEMU/TCG VMs behind a bridge.

Why not through the server: the server pins every TAP to the MAC and address it allocated (its bridge
firewall drops anything else), and it has no call that changes them yet; wiring ``configure`` into
the node (new slot, firewall update, then configure) is the next step. Here the test builds what the
server would, in a network namespace it creates and deletes: a bridge carrying the gateway addresses of
two subnets, and a TAP per VM. The VM is started with the project's own ``Vm`` machinery and the
working tree's agent injected into a private copy of the installed root filesystem, and the test talks
to that agent directly. Nothing leaves the namespace: the bridge has no route onward.

Checked from inside the guest (procfs, sysfs, iproute2, its own ping of the gateway) and from the
namespace (ICMP to the old and new address, the bridge's forwarding table, the neighbour table), so
the agent's own read-back is never the only witness.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

import pytest
from support.netns import NetNamespace, icmp_echo, netns_unavailable_reason

from clawpot.agent_client import AgentClient, ConfiguredIdentity, GuestIdentity
from clawpot.assets.bootargs import GuestIp, guest_cmdline
from clawpot.assets.inject import inject
from clawpot.vm.boot import OVERLAY_DEVICE
from clawpot.vm.config import VmConfig
from clawpot.vm.handle import Vm
from clawpot.vmm.qemu.backend import QemuBackend
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.spec import NetworkInterface

BRIDGE = "cpi-br0"
READY_TIMEOUT = 120.0
# The identity a VM is booted with (kernel ip= and clawpot.hostname), and the ones configure gives it.
BOOT = GuestIdentity(
    hostname="boot-a",
    address="192.168.77.2/24",
    gateway="192.168.77.1",
    dns=["192.168.77.1"],
    mac="06:00:c0:a8:4d:02",
)
NEW = GuestIdentity(
    hostname="fork-b",
    address="192.168.78.9/24",
    gateway="192.168.78.1",
    dns=["192.168.78.1"],
    mac="06:00:c0:a8:4e:09",
)
# Same address as NEW, another MAC and name: what a second hand-out of the same slot looks like.
NEW_MAC = GuestIdentity(hostname="fork-c", address=NEW.address, gateway=NEW.gateway, mac="06:00:c0:a8:4e:0c")


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


@pytest.fixture(scope="module")
def rootfs(installed_assets: InstalledAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed root filesystem with this working tree's agent (the one that has configure)."""
    image = tmp_path_factory.mktemp("identity-rootfs") / "rootfs.ext4"
    subprocess.run(["cp", "--sparse=always", str(installed_assets.rootfs), str(image)], check=True)
    inject(image)
    return image


@pytest.fixture
def ns() -> Any:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with NetNamespace.create("clawpot-ident") as namespace:
        namespace.run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        for gateway in (BOOT.gateway, NEW.gateway):
            namespace.run(["ip", "address", "add", f"{gateway}/24", "dev", BRIDGE])
        namespace.run(["ip", "link", "set", BRIDGE, "up"])
        yield namespace


def _add_tap(ns: NetNamespace, tap: str) -> None:
    ns.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
    ns.run(["ip", "link", "set", tap, "master", BRIDGE])
    ns.run(["ip", "link", "set", tap, "up"])


# --- observations (run inside the namespace) ---------------------------------------------------------


async def _guest_view(agent: AgentClient) -> dict[str, Any]:
    async def read(*argv: str) -> str:
        result = await agent.run(list(argv))
        assert result.status.exit_code == 0, (argv, result.stderr)
        return result.stdout.decode()

    (addrs,) = json.loads(await read("ip", "-json", "-4", "address", "show", "eth0"))
    routes = [line.split() for line in (await read("cat", "/proc/net/route")).splitlines()[1:]]
    defaults = [(r[0], _hex_ip(r[2])) for r in routes if r[1] == "00000000"]
    return {
        "hostname": (await read("cat", "/proc/sys/kernel/hostname")).strip(),
        "etc_hostname": (await read("cat", "/etc/hostname")).strip(),
        "mac": (await read("cat", "/sys/class/net/eth0/address")).strip(),
        "addresses": [f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"]],
        "defaults": defaults,
        "resolv": [
            line.split()[1]
            for line in (await read("cat", "/etc/resolv.conf")).splitlines()
            if line.startswith("nameserver")
        ],
    }


def _hex_ip(little_endian_hex: str) -> str:
    raw = bytes.fromhex(little_endian_hex)[::-1]
    return ".".join(str(b) for b in raw)


def _expected_view(identity: GuestIdentity) -> dict[str, Any]:
    assert identity.address is not None and identity.gateway is not None
    return {
        "hostname": identity.hostname,
        "etc_hostname": identity.hostname,
        "mac": identity.mac,
        "addresses": [identity.address],  # the old address is gone, not kept as a second one
        "defaults": [("eth0", identity.gateway)],
        "resolv": list(identity.dns or ()),
    }


def _ip_of(identity: GuestIdentity) -> str:
    assert identity.address is not None
    return identity.address.split("/")[0]


def _fdb_port(mac: str | None) -> str | None:
    """The bridge port the bridge has learned ``mac`` on, if any."""
    for entry in json.loads(
        subprocess.run(
            ["bridge", "-json", "fdb", "show", "br", BRIDGE], capture_output=True, text=True, check=True
        ).stdout
    ):
        if entry.get("mac") == mac and "permanent" not in entry.get("state", ""):
            return str(entry.get("ifname"))
    return None


def _neighbour(ip: str) -> str | None:
    entries = json.loads(
        subprocess.run(
            ["ip", "-json", "neigh", "show", ip], capture_output=True, text=True, check=True
        ).stdout
    )
    return entries[0].get("lladdr") if entries else None


def _wait_for_neighbour(ip: str, mac: str | None, timeout: float = 5.0) -> bool:
    """The announcement crosses the bridge asynchronously: give it a moment (no ping is sent meanwhile)."""
    deadline = time.monotonic() + timeout
    while _neighbour(ip) != mac and time.monotonic() < deadline:
        time.sleep(0.05)
    return _neighbour(ip) == mac


async def _guest_pings_gateway(agent: AgentClient, gateway: str | None) -> bool:
    assert gateway is not None
    return (await agent.run(["ping", "-c", "1", "-W", "5", gateway])).status.exit_code == 0


async def _check(agent: AgentClient, result: ConfiguredIdentity, identity: GuestIdentity) -> None:
    assert result.satisfies(identity), result
    assert result.addresses == (identity.address,) and result.link_up
    assert await _guest_view(agent) == _expected_view(identity)
    assert await asyncio.to_thread(icmp_echo, _ip_of(identity), 10.0), f"{identity.address} does not answer"
    assert await _guest_pings_gateway(agent, identity.gateway)


async def _boot(kernel: Path, rootfs: Path, work: Path, tap: str, boot_args: str, mac: str) -> Vm:
    config = VmConfig(
        kernel,
        rootfs,
        boot_args=boot_args,
        network_interfaces=(NetworkInterface(tap, mac),),
        ready_timeout=READY_TIMEOUT,
    )
    vm = Vm(config, QemuBackend(accel=Accel.TCG), root=work / "vms")
    await vm.start()
    assert vm.agent is not None
    return vm


# --- a VM that already has an identity ----------------------------------------------------------------


def _reconfigure(kernel: Path, rootfs: Path, work: Path, tap: str) -> None:
    """Inside the namespace: boot with BOOT on the kernel command line, then configure NEW, NEW, NEW_MAC."""
    assert BOOT.address and BOOT.gateway and BOOT.mac and BOOT.dns
    boot_args = guest_cmdline(
        overlay_device=OVERLAY_DEVICE,
        hostname=BOOT.hostname,
        ip=GuestIp(_ip_of(BOOT), BOOT.gateway),
        dns=",".join(BOOT.dns),
    )

    async def main() -> None:
        vm = await _boot(kernel, rootfs, work, tap, boot_args, BOOT.mac or "")
        try:
            agent = vm.agent
            assert agent is not None
            assert await _guest_view(agent) == _expected_view(BOOT)
            assert await asyncio.to_thread(icmp_echo, _ip_of(BOOT), 10.0)
            assert _fdb_port(NEW.mac) is None and _neighbour(_ip_of(NEW)) is None

            # 1. A new identity on a VM that has one: everything changes, the old address is gone.
            result = await agent.configure(NEW)
            assert result.changed == {"mac", "address", "gateway", "hostname", "dns"} and result.announced
            # The gratuitous ARP is the only frame the guest sent since: the bridge learned the new MAC
            # on the VM's port from it (IPv6 is off in the guest kernel, so nothing else talks).
            assert _fdb_port(NEW.mac) == tap
            await _check(agent, result, NEW)
            assert not await asyncio.to_thread(icmp_echo, _ip_of(BOOT), 3.0), "the old address still answers"

            # 2. The same identity again: nothing changes, and everything still works.
            again = await agent.configure(NEW)
            assert again.changed == frozenset()
            await _check(agent, again, NEW)

            # 3. Same address, new MAC: the namespace's neighbour entry for the address (learned by the
            # pings above) switches to the new MAC from the announcement alone, before any new ping.
            assert _neighbour(_ip_of(NEW)) == NEW.mac
            third = await agent.configure(NEW_MAC)
            assert third.changed == {"mac", "hostname"} and third.announced
            assert await asyncio.to_thread(_wait_for_neighbour, _ip_of(NEW), NEW_MAC.mac)
            assert _fdb_port(NEW_MAC.mac) == tap
            expected = GuestIdentity(
                hostname=NEW_MAC.hostname,
                address=NEW.address,
                gateway=NEW.gateway,
                dns=NEW.dns,
                mac=NEW_MAC.mac,
            )
            await _check(agent, third, expected)
        finally:
            await vm.stop(grace=0)

    asyncio.run(main())


def test_configure_replaces_the_identity_of_a_running_vm(
    ns: NetNamespace, installed_assets: InstalledAssets, rootfs: Path, tmp_path: Path
) -> None:
    tap = "cpi-tap0"
    _add_tap(ns, tap)
    ns.call(_reconfigure, installed_assets.kernel, rootfs, tmp_path, tap, timeout=400)


# --- a VM booted without one -------------------------------------------------------------------------


def _configure_bare(kernel: Path, rootfs: Path, work: Path, tap: str) -> None:
    """Inside the namespace: boot with no ip=, no hostname, no DNS; configure NEW; it is reachable."""

    async def main() -> None:
        # The NIC keeps QEMU's MAC until configure: the guest learns its identity only from the agent.
        vm = await _boot(
            kernel, rootfs, work, tap, guest_cmdline(overlay_device=OVERLAY_DEVICE), "06:00:00:00:00:01"
        )
        try:
            agent = vm.agent
            assert agent is not None
            before = await agent.run(["ip", "-json", "-4", "address", "show", "eth0"])
            assert not any(e.get("addr_info") for e in json.loads(before.stdout)), before  # no address yet
            result = await agent.configure(NEW)
            assert result.changed == {"mac", "address", "gateway", "hostname", "dns"}
            await _check(agent, result, NEW)
        finally:
            await vm.stop(grace=0)

    asyncio.run(main())


def test_configure_gives_an_identity_to_a_vm_booted_without_one(
    ns: NetNamespace, installed_assets: InstalledAssets, rootfs: Path, tmp_path: Path
) -> None:
    tap = "cpi-tap1"
    _add_tap(ns, tap)
    ns.call(_configure_bare, installed_assets.kernel, rootfs, tmp_path, tap, timeout=400)
