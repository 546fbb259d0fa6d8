"""One real QEMU process (TCG) at the VmmProcess level: start, QMP, exits seen at once, cleanup.

The guests here do not need the agent: ``init=/bin/sleep`` idles in userland, ``init=/bin/echo`` ends
the guest (init exits → panic → reboot → QEMU quits because of -no-reboot).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest

from clawpot.vm import procfs
from clawpot.vmm.base import VmmConfigError, VmmStartError
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.qemu.facts import qemu_facts
from clawpot.vmm.qemu.process import QemuProcess
from clawpot.vmm.qemu.qmp import QmpControl, QmpError
from clawpot.vmm.spec import Drive, VmSpec


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


BASE_ARGS = "console=ttyS0 root=/dev/vda ro panic=1"


def _spec(assets: InstalledAssets, init: str, kernel: Path | None = None) -> VmSpec:
    return VmSpec(
        kernel=kernel or assets.kernel,
        boot_args=f"{BASE_ARGS} init={init}",
        drives=(Drive("root", assets.rootfs, read_only=True),),
        memory_mib=128,
    )


@pytest.fixture
async def idle_vm(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path: Path
) -> AsyncIterator[QemuProcess]:
    process = QemuProcess(
        _spec(installed_assets, "/bin/sleep -- 600"), tmp_path / "vm", accel=Accel.TCG, binary=str(qemu_bin)
    )
    await process.start()
    yield process
    await process.kill()


def _leftovers(process: QemuProcess) -> list[Path]:
    return [path for path in process.files.sockets if path.exists()]


async def test_running_vm_answers_qmp(idle_vm: QemuProcess) -> None:
    assert idle_vm.pid is not None and procfs.is_alive(idle_vm.pid)
    assert await idle_vm.qmp.status() == "running"
    assert idle_vm.exit_info is None
    with pytest.raises(QmpError, match="no-such-command"):
        await idle_vm.qmp.execute("no-such-command")
    # The failed command did not break the channel.
    assert await idle_vm.qmp.status() == "running"


async def test_status_facts(idle_vm: QemuProcess, tmp_path: Path) -> None:
    facts = await qemu_facts(idle_vm.control_socket, data=tmp_path)
    assert facts["vmm_state"] == "running"
    assert (facts["vcpus"], facts["memory_mib"], facts["accelerator"]) == (1, 128, "tcg")
    assert re.fullmatch(r"qemu \d+\.\d+\.\d+", facts["vmm_version"])
    gone = await qemu_facts(tmp_path / "nothing.sock", data=tmp_path)
    assert "vmm_error" in gone and "vmm_state" not in gone


async def test_kill_9_from_outside_is_seen_at_once(idle_vm: QemuProcess) -> None:
    assert idle_vm.pid is not None
    os.kill(idle_vm.pid, signal.SIGKILL)
    started = time.monotonic()
    info = await asyncio.wait_for(idle_vm.wait(), 1.0)  # the requirement: Error within 1 s
    assert time.monotonic() - started < 1.0
    assert info.signal == signal.SIGKILL and info.reason == "qemu killed by SIGKILL"
    await idle_vm.kill()  # idempotent; removes the sockets SIGKILL left behind
    assert _leftovers(idle_vm) == []
    assert not procfs.is_alive(idle_vm.pid)


async def test_stop_ends_process_and_removes_sockets(idle_vm: QemuProcess) -> None:
    pid = idle_vm.pid
    assert pid is not None
    # This guest has no ACPI power-button handling, so stop falls through to QMP quit.
    info = await idle_vm.stop(grace=0.2)
    assert (info.returncode, info.signal, info.reason) == (0, None, "qemu quit on request")
    assert not procfs.is_alive(pid)
    assert _leftovers(idle_vm) == []
    assert await idle_vm.stop() == info  # stopping a stopped VM just reports again


async def test_guest_reboot_ends_qemu(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path: Path
) -> None:
    process = QemuProcess(
        _spec(installed_assets, "/bin/echo -- guest-says-bye"),
        tmp_path / "vm",
        accel=Accel.TCG,
        binary=str(qemu_bin),
    )
    await process.start()
    try:
        info = await asyncio.wait_for(process.wait(), 60)
    finally:
        await process.kill()
    assert info.returncode == 0, info.reason
    assert "guest-says-bye" in process.serial_log.read_text(errors="replace")


async def test_rejected_config_is_one_line_and_leaves_nothing(qemu_bin: Path, tmp_path: Path) -> None:
    not_a_kernel = tmp_path / "vmlinux"
    not_a_kernel.write_text("this is not a kernel\n")
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"\0" * 4096)
    spec = VmSpec(not_a_kernel, BASE_ARGS, (Drive("root", rootfs, read_only=True),))
    vm_dir = tmp_path / "vm"
    process = QemuProcess(spec, vm_dir, accel=Accel.TCG, binary=str(qemu_bin))
    with pytest.raises(VmmConfigError) as caught:
        await process.start()
    message = str(caught.value)
    assert message.startswith("QEMU did not start: qemu exited with code 1: ") and "\n" not in message
    assert process.pid is not None and not procfs.is_alive(process.pid)
    assert list(vm_dir.iterdir()) == []


async def test_qmp_to_nobody_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QmpError, match=r"QMP query-status on .*missing\.sock"):
        await QmpControl(tmp_path / "missing.sock", timeout=1.0).status()


async def test_stale_socket_is_replaced_live_one_refused(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path: Path
) -> None:
    spec = _spec(installed_assets, "/bin/sleep -- 600")
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(vm_dir / "qmp.sock"))
    stale.close()  # the file stays, nobody listens: what a SIGKILLed QEMU leaves behind
    process = QemuProcess(spec, vm_dir, accel=Accel.TCG, binary=str(qemu_bin))
    await process.start()
    try:
        assert await process.qmp.status() == "running"
    finally:
        await process.kill()

    with socket.socket(socket.AF_UNIX) as live:
        pinned = tmp_path / "busy.sock"
        live.bind(str(pinned))
        live.listen()
        other = QemuProcess(spec, tmp_path / "vm2", accel=Accel.TCG, binary=str(qemu_bin), qmp_socket=pinned)
        with pytest.raises(VmmStartError, match="is in use by another process"):
            await other.start()
        assert other.pid is None and pinned.is_socket()
