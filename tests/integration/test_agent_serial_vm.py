"""The agent on a real virtio-serial port (QEMU microvm, TCG here): reconnects and a clean power-off.

What a host cannot imitate: read() returning 0 while no host is connected, SIGIO on reconnect, output
queued in the VMM reaching the next connection, and a writable layer that is only reachable by an
emergency remount. The working tree's agent is injected into a private copy of the installed root
filesystem, so this always tests the current agent. One VM is booted for the module; the power-off test
runs last and ends it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest
import pytest_asyncio

from clawpot.agent_client import AgentClient, GuestError, Output, wait_ready
from clawpot.assets.inject import inject
from clawpot.vm.config import VmConfig
from clawpot.vm.handle import Vm
from clawpot.vmm.qemu.backend import QemuBackend

pytestmark = pytest.mark.asyncio(loop_scope="module")

READY_TIMEOUT = 90.0


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


def _prepare_rootfs(source: Path, target: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
    inject(target)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vm(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Vm]:
    work = tmp_path_factory.mktemp("agentvm")
    rootfs = work / "rootfs.ext4"
    await asyncio.to_thread(_prepare_rootfs, installed_assets.rootfs, rootfs)
    config = VmConfig(installed_assets.kernel, rootfs, ready_timeout=READY_TIMEOUT)
    machine = Vm(config, QemuBackend(qemu_bin, data=work / "data"), root=work / "vms")
    try:
        await machine.start()
        yield machine
    finally:
        await machine.stop(grace=0)


async def _reconnect(machine: Vm) -> AgentClient:
    if machine.agent is not None:
        await machine.agent.close()
    assert machine.vmm is not None and machine.vmm.agent_endpoint is not None
    machine.agent = await wait_ready(machine.vmm.agent_endpoint, 30)
    return machine.agent


async def test_reconnect_kills_what_the_previous_host_left_running(vm: Vm) -> None:
    assert vm.agent is not None
    proc = await vm.agent.exec(["sh", "-c", "while :; do echo tick-tick-tick; done"], stdin=False)
    for _ in range(5):  # output is flowing; more is queued in the VMM when we drop the connection
        assert isinstance(await anext(proc), Output)
    leftover = proc.pid
    client = await _reconnect(vm)
    gone = await client.run(["sh", "-c", f"sleep 0.5; test -e /proc/{leftover} && echo alive || echo gone"])
    assert gone.stdout == b"gone\n"


async def test_immediate_reconnects(vm: Vm) -> None:
    for i in range(3):
        client = await _reconnect(vm)
        assert (await client.run(["echo", str(i)])).stdout == f"{i}\n".encode()


async def test_file_round_trip_over_serial(vm: Vm, tmp_path: Path) -> None:
    assert vm.agent is not None
    data = os.urandom(4 << 20)
    assert await vm.agent.put_file(data, "/var/tmp/blob", mode=0o600) == len(data)
    local = tmp_path / "blob"
    info = await vm.agent.get_file("/var/tmp/blob", local)
    assert info.mode == 0o600
    assert hashlib.sha256(await asyncio.to_thread(local.read_bytes)).digest() == hashlib.sha256(data).digest()


async def test_shutdown_powers_off_and_leaves_the_layer_clean(vm: Vm) -> None:
    assert vm.agent is not None and vm.vmm is not None and vm.directory is not None
    layer = vm.directory.scratch_disk
    started = time.monotonic()
    try:
        await vm.agent.shutdown()
    except GuestError:
        pass  # the guest may be gone before the answer is out
    exit_info = await asyncio.wait_for(vm.vmm.wait(), 60)
    print(f"\nguest off {time.monotonic() - started:.1f} s after the shutdown request: {exit_info.reason}")
    assert exit_info.returncode == 0
    assert vm.serial_log is not None
    console = vm.serial_log.read_text(errors="replace")
    assert "Emergency Remount complete" in console
    dumped = await asyncio.to_thread(
        subprocess.run, ["dumpe2fs", "-h", str(layer)], capture_output=True, text=True, check=True
    )
    header = dumped.stdout
    assert "needs_recovery" not in header, "the writable layer's journal was left dirty"
