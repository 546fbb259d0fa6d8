"""A QEMU VM with a NIC on a TAP, inside a network namespace this test creates and deletes.

The guest's eth0 is configured by the kernel's ``ip=``; a TCP exchange between the guest and a listener
on the TAP's address (both inside the namespace) proves the NIC carries traffic both ways. Nothing
leaves the namespace: the guest's only route is the TAP, which has no route onward.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Protocol

import pytest
from support.netns import NetNamespace, netns_unavailable_reason

from clawpot.agent_client import wait_ready
from clawpot.assets.bootargs import GuestIp, guest_cmdline
from clawpot.vm.boot import OVERLAY_DEVICE
from clawpot.vm.config import VmConfig
from clawpot.vm.handle import Vm
from clawpot.vmm.qemu.backend import QemuBackend
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.spec import NetworkInterface

TAP = "cpq-tap0"
MAC = "06:00:ac:1f:63:02"
HOST_IP, GUEST_IP = "172.31.99.1", "172.31.99.2"
PORT = 7000


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


def _serve_once(listener: socket.socket, got: list[bytes]) -> None:
    listener.settimeout(60)
    with listener, listener.accept()[0] as conn:
        conn.settimeout(10)
        got.append(conn.recv(100))
        conn.sendall(b"hello-from-host")


def _boot_and_talk(kernel: Path, rootfs: Path, work: Path, accel: Accel) -> dict[str, str]:
    """Runs in a child inside the namespace: boot the VM, exchange data over the NIC, stop."""
    listener = socket.create_server((HOST_IP, PORT))
    got: list[bytes] = []
    server = threading.Thread(target=_serve_once, args=(listener, got), daemon=True)
    server.start()

    async def main() -> dict[str, str]:
        config = VmConfig(
            kernel,
            rootfs,
            boot_args=guest_cmdline(overlay_device=OVERLAY_DEVICE, ip=GuestIp(GUEST_IP, HOST_IP)),
            network_interfaces=(NetworkInterface(TAP, MAC),),
            wait_ready=False,
        )
        vm = Vm(config, QemuBackend(accel=accel), root=work / "vms")
        try:
            await vm.start()
            assert vm.agent_endpoint is not None
            async with await wait_ready(vm.agent_endpoint, 90) as agent:
                mac = await agent.run(["cat", "/sys/class/net/eth0/address"])
                script = (
                    "import socket\n"
                    f"s = socket.create_connection(('{HOST_IP}', {PORT}), timeout=10)\n"
                    "s.sendall(b'hello-from-guest')\n"
                    "print(s.recv(100).decode())\n"
                )
                talk = await agent.run(["python3", "-c", script], timeout=30)
            return {
                "mac": mac.stdout.decode().strip(),
                "guest_heard": talk.stdout.decode().strip(),
                "guest_error": talk.stderr.decode().strip(),
            }
        finally:
            await vm.stop(grace=0)

    result = asyncio.run(main())
    server.join(timeout=10)
    result["host_heard"] = got[0].decode() if got else ""
    return result


def test_nic_on_a_tap_carries_traffic(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path: Path
) -> None:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with NetNamespace.create("clawpot-qemu") as ns:
        ns.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap"])
        ns.run(["ip", "address", "add", f"{HOST_IP}/24", "dev", TAP])
        ns.run(["ip", "link", "set", TAP, "up"])
        # TCG: the accelerator probe is covered elsewhere; here only the NIC matters.
        result = ns.call(
            _boot_and_talk, installed_assets.kernel, installed_assets.rootfs, tmp_path, Accel.TCG, timeout=180
        )
    assert result["mac"] == MAC
    assert result["guest_heard"] == "hello-from-host", result["guest_error"]
    assert result["host_heard"] == "hello-from-guest"
