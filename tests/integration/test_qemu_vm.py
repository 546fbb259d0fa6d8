"""Real VMs on the QEMU backend through the VM lifecycle: readiness, exec, isolation, crash, stop.

Two VMs are booted once for the module (in parallel) and shared: exec and isolation tests only read or
write files of their own; the crash test kills VM A last-but-one, and the final test stops both and
checks nothing is left. The accelerator comes from the real probe (TCG on kvm_pvm hosts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest
import pytest_asyncio

from clawpot.agent.protocol import READY_LINE
from clawpot.agent_client import AgentClient
from clawpot.assets.hashing import sha256_file
from clawpot.vm import procfs
from clawpot.vm.config import VmConfig
from clawpot.vm.errors import VmStartError
from clawpot.vm.handle import Vm
from clawpot.vm.state import VmState
from clawpot.vmm.qemu.backend import QemuBackend

pytestmark = pytest.mark.asyncio(loop_scope="module")

READY_TIMEOUT = 90.0  # two TCG guests booting at once on a loaded 2-core machine


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


@dataclasses.dataclass
class Booted:
    a: Vm
    b: Vm
    base_sha256: str
    rootfs: Path
    guest_release: str

    @staticmethod
    def agent(vm: Vm) -> AgentClient:
        # The connection readiness opened, kept by the VM (a serial port serves one host connection).
        assert vm.agent is not None
        return vm.agent


def _guest_release(kernel: Path) -> str:
    found = re.search(rb"Linux version (\S+) ", kernel.read_bytes())
    assert found, f"no 'Linux version' string in {kernel}"
    return found.group(1).decode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def booted(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Booted]:
    work = tmp_path_factory.mktemp("qvm")
    backend = QemuBackend(qemu_bin, data=work / "data")  # accelerator: the real probe, cached in work/
    config = VmConfig(installed_assets.kernel, installed_assets.rootfs, ready_timeout=READY_TIMEOUT)
    vms = [Vm(config, backend, root=work / "vms") for _ in "ab"]
    base_sha = sha256_file(installed_assets.rootfs)
    try:
        started = time.monotonic()
        await asyncio.gather(*(vm.start() for vm in vms))
        elapsed = time.monotonic() - started
        print(f"\ntwo QEMU VMs ({backend.accel}) running, agents ready, in {elapsed:.1f} s")
        yield Booted(vms[0], vms[1], base_sha, installed_assets.rootfs, _guest_release(config.kernel))
    finally:
        await asyncio.gather(*(vm.stop(grace=0) for vm in vms), return_exceptions=True)


async def test_running_means_the_agent_answered(booted: Booted) -> None:
    for vm in (booted.a, booted.b):
        assert vm.state is VmState.RUNNING
        assert vm.serial_log is not None
        assert READY_LINE in vm.serial_log.read_text(errors="replace")
        assert booted.agent(vm).info.guest


async def test_exec_uname_reports_the_guest_kernel(booted: Booted) -> None:
    result = await booted.agent(booted.a).run(["uname", "-a"])
    assert result.exit_code == 0, result.stderr
    assert booted.guest_release in result.stdout.decode()
    assert booted.guest_release != os.uname().release  # really the guest's kernel, not the host's


async def test_exit_code_passes_through(booted: Booted) -> None:
    result = await booted.agent(booted.b).run(["sh", "-c", "exit 7"])
    assert result.exit_code == 7


async def test_writes_stay_in_their_vm_and_base_image_unchanged(booted: Booted) -> None:
    agent_a, agent_b = booted.agent(booted.a), booted.agent(booted.b)
    path = "/clawpot-isolation-check"
    write_a = await agent_a.run(["sh", "-c", f"echo written-by-a > {path} && sync"])
    assert write_a.exit_code == 0, write_a.stderr
    seen_by_b = await agent_b.run(["test", "-e", path])
    assert seen_by_b.exit_code == 1  # not there: A's write went to A's own layer
    write_b = await agent_b.run(["sh", "-c", f"echo written-by-b > {path} && sync"])
    assert write_b.exit_code == 0, write_b.stderr
    assert (await agent_a.run(["cat", path])).stdout == b"written-by-a\n"
    assert (await agent_b.run(["cat", path])).stdout == b"written-by-b\n"
    assert sha256_file(booted.rootfs) == booted.base_sha256
    # Creating a VM never copied the base image: each VM directory holds only a sparse layer.
    base_size = booted.rootfs.stat().st_size
    for vm in (booted.a, booted.b):
        assert vm.directory is not None
        allocated = sum(p.stat().st_blocks * 512 for p in vm.directory.path.iterdir() if p.is_file())
        assert allocated < base_size / 4, f"{vm.directory.path} holds {allocated} bytes"


async def test_kill_9_puts_that_vm_in_error_within_1s(booted: Booted) -> None:
    a, b = booted.a, booted.b
    assert a.vmm is not None and a.vmm.pid is not None
    os.kill(a.vmm.pid, signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.wait_for(a.wait_for(VmState.ERROR), timeout=1.0)
    assert time.monotonic() - killed < 1.0
    assert "SIGKILL" in a.reason
    # The other VM did not notice.
    assert b.state is VmState.RUNNING
    assert (await booted.agent(b).run(["true"])).exit_code == 0


async def test_stop_leaves_no_process_socket_or_directory(booted: Booted) -> None:
    for vm in (booted.b, booted.a):  # the running one, then the one in Error
        assert vm.vmm is not None and vm.directory is not None
        pid, directory = vm.vmm.pid, vm.directory.path
        sockets = [p for p in directory.iterdir() if p.is_socket()]
        await vm.stop()  # Running: the agent powers the guest off; Error: only the clean-up is left
        assert vm.state is VmState.STOPPED
        assert pid is not None and not procfs.is_alive(pid)
        assert not directory.exists()
        assert not any(p.exists() for p in sockets)


async def test_boot_timeout_is_an_error_with_the_serial_tail(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path: Path
) -> None:
    # A guest whose init never starts an agent: readiness must time out, not hang, and say why.
    config = VmConfig(
        installed_assets.kernel,
        installed_assets.rootfs,
        boot_args="console=ttyS0 panic=1 pci=off root=/dev/vda ro init=/bin/sleep -- 600",
        writable_layer=False,
        ready_timeout=8.0,  # the kernel reaches init in ~1.5 s under TCG; room for a loaded machine
    )
    vm = Vm(config, QemuBackend(qemu_bin, data=tmp_path / "data"), root=tmp_path / "vms")
    with pytest.raises(VmStartError) as caught:
        await vm.start()
    assert vm.state is VmState.ERROR and caught.value.step == "wait for agent"
    assert vm.vmm is not None and vm.vmm.pid is not None and not procfs.is_alive(vm.vmm.pid)
    assert not (tmp_path / "vms" / vm.id).exists()
    await vm.stop()
    assert "Run /bin/sleep as init process" in str(caught.value)  # the serial console's last lines
