"""The capped console with a real QEMU (TCG) whose guest floods it, at the VmmProcess level (no agent:
the guest's init is ``yes``, writing its line to the console as fast as the UART takes it).

What the server relies on when it restarts: with nobody reading the console FIFO, QEMU stays
responsive (QMP answers) and nothing is written to disk; a reader that comes back by the FIFO's path
(as an adopting server does) gets the output flowing again, still capped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest

from clawpot import limits
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.qemu.process import QemuProcess, reattach_console
from clawpot.vmm.spec import Drive, VmSpec

CAP = limits.CONSOLE_LOG_MAX_BYTES
LINE = "flooding-the-console-0123456789"


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


@pytest.fixture
async def flooding_vm(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path: Path
) -> AsyncIterator[QemuProcess]:
    spec = VmSpec(
        kernel=installed_assets.kernel,
        boot_args=f"console=ttyS0 root=/dev/vda ro panic=1 init=/usr/bin/yes -- {LINE}",
        drives=(Drive("root", installed_assets.rootfs, read_only=True),),
        memory_mib=128,
        agent_channel=False,
    )
    process = QemuProcess(spec, tmp_path / "vm", accel=Accel.TCG, binary=str(qemu_bin))
    await process.start()
    yield process
    await process.kill()


def _console_bytes(process: QemuProcess) -> list[int]:
    return [p.stat().st_size for p in process.vm_dir.glob("console.log*")]


async def test_console_without_a_reader_holds_and_resumes(flooding_vm: QemuProcess) -> None:
    process = flooding_vm
    assert process.console is not None
    async with asyncio.timeout(60):
        while process.console.bytes_read < 2 * CAP:  # the flood is on, past the cap
            assert all(size <= CAP for size in _console_bytes(process))
            await asyncio.sleep(0.02)
    # The reader goes away, as when the server stops: QEMU keeps the FIFO and nothing reaches the disk.
    process.console.close()
    on_disk = _console_bytes(process)
    await asyncio.sleep(3)
    started = time.monotonic()
    status = await process.qmp.status()
    qmp_ms = (time.monotonic() - started) * 1000
    print(f"\nQMP query-status with a full console FIFO and no reader: {qmp_ms:.1f} ms ({status})")
    assert status == "running" and process.exit_info is None
    assert _console_bytes(process) == on_disk
    # A new reader by the FIFO's path (what an adopting server does) gets the flood flowing again.
    again = reattach_console(process.vm_dir)
    assert again is not None
    try:
        async with asyncio.timeout(60):
            while again.bytes_read < 2 * CAP:
                assert all(size <= CAP for size in _console_bytes(process))
                await asyncio.sleep(0.02)
    finally:
        again.close()
    assert LINE.encode() in process.serial_log.read_bytes()[-1024:]
    assert sum(_console_bytes(process)) <= 2 * CAP
