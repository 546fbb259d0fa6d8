"""Snapshot create/load/resume with the real Firecracker binary and the real guest kernel.

On this project's machines (kvm_pvm, DESIGN §2) the guest kernel prints for several seconds and then
dies with KVM_EXIT_INTERNAL_ERROR; on a KVM host it boots on. The test works either way: as soon as
``Linux version`` shows on the console the VM is paused and snapshotted, the source firecracker is
killed, the snapshot is loaded into a new firecracker process in another directory and resumed. There
the VM is Running, its console continues (new lines in the new console file), it opened its own
copy of the writable layer (never the source's), and if the guest dies its exit is reported with
firecracker's own reason and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest
from firecracker_helpers import require_available

from clawpot.assets.bootargs import guest_cmdline
from clawpot.assets.scratch import make_scratch_disk
from clawpot.vm import procfs
from clawpot.vmm.firecracker import models
from clawpot.vmm.firecracker.backend import FirecrackerBackend
from clawpot.vmm.firecracker.handle import FirecrackerVmm
from clawpot.vmm.snapshot import MANIFEST_NAME, MEMORY_NAME, STATE_NAME, SnapshotCorrupt
from clawpot.vmm.spec import Drive, VmSpec

DEADLINE_S = 60.0


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


async def _console_shows(vmm: FirecrackerVmm, text: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if vmm.serial_log.exists() and text in vmm.serial_log.read_text(errors="replace"):
            return True
        if vmm.exit_info is not None:
            return False
        await asyncio.sleep(0.02)
    return False


async def _console_grows(vmm: FirecrackerVmm, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if vmm.serial_log.exists() and vmm.serial_log.stat().st_size > 0:
            return True
        await asyncio.sleep(0.05)
    return vmm.serial_log.exists() and vmm.serial_log.stat().st_size > 0


def _file_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _open_file_ids(pid: int) -> set[tuple[int, int]]:
    found = set()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found.add(_file_id(entry))
    return found


async def _until(predicate: Callable[[], bool], within: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_snapshot_load_resume_with_the_real_binary(
    installed_assets: InstalledAssets, firecracker_bin: Path, tmp_path: Path, root_required: None
) -> None:
    backend = FirecrackerBackend(firecracker_bin)
    require_available(backend.capabilities())
    source_dir, clone_dir, snap = tmp_path / "src", tmp_path / "clone", tmp_path / "snap"
    source_dir.mkdir()
    layer = make_scratch_disk(source_dir / "scratch.ext4", size_mib=64)
    spec = VmSpec(
        kernel=installed_assets.kernel,
        boot_args=guest_cmdline(overlay_device="/dev/vdb"),
        drives=(Drive("rootfs", installed_assets.rootfs, True), Drive("scratch", layer, False)),
        memory_mib=128,
    )
    source = backend.prepare(spec, source_dir)
    await source.start()
    try:
        assert await _console_shows(source, "Linux version", time.monotonic() + DEADLINE_S), (
            f"no 'Linux version' on the console: {source.exit_info}"
        )
        began = time.monotonic()
        await source.pause()
        assert (await source.client.instance_info()).state is models.InstanceState.PAUSED
        await source.snapshot(snap)
        print(f"\nfirecracker pause + snapshot of 128 MiB: {1000 * (time.monotonic() - began):.0f} ms")
    finally:
        await source.kill()
    assert {p.name for p in snap.iterdir()} == {MANIFEST_NAME, STATE_NAME, MEMORY_NAME, "drive-scratch"}
    assert '"backend": "firecracker"' in (snap / MANIFEST_NAME).read_text()

    clone = backend.restore(snap, clone_dir)
    await clone.start()
    pid = clone.pid
    assert pid is not None
    try:
        if clone.exit_info is None:
            info = await clone.client.instance_info()
            assert info.state is models.InstanceState.RUNNING
            # Its own copy of the writable layer, and nothing of the source's directory (compared as
            # files: a jailed firecracker names them by their paths inside its chroot).
            files = _open_file_ids(pid)
            assert _file_id(clone_dir / "scratch.ext4") in files
            assert not any(_file_id(f) in files for f in source_dir.rglob("*") if f.is_file())
            assert (clone_dir / "vsock.sock").is_socket()
            # Firecracker's own metrics, set over the API before the load (not part of a snapshot).
            assert clone.metrics is not None
            before = clone.metrics.state.documents
            await clone.client.flush_metrics()
            assert await _until(lambda: clone.metrics is not None and clone.metrics.state.documents > before)
            print(f"restored: {clone.metrics.state.documents} firecracker metrics documents read")
        # The console continues: the guest prints on after the restore, into the clone's fresh file.
        assert await _console_grows(clone, time.monotonic() + DEADLINE_S), "no console output after restore"
        exited = await clone.process.wait_at_most(DEADLINE_S)
        if exited is not None:
            # The kvm_pvm case: the guest died, and the restored process reports it as a booted one does.
            assert exited.reason.startswith("firecracker "), exited.reason
            print(f"restored guest ended: {exited.reason}")
    finally:
        await clone.kill()
    assert not procfs.is_alive(pid)
    assert not any(p.is_socket() for p in clone_dir.iterdir())
    shutil.rmtree(snap)


async def test_a_damaged_snapshot_is_refused_before_firecracker_starts(
    firecracker_bin: Path, tmp_path: Path
) -> None:
    backend = FirecrackerBackend(firecracker_bin)
    require_available(backend.capabilities())
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / MANIFEST_NAME).write_text('{"format": 1, "backend": "firecracker"')  # cut short
    with pytest.raises(SnapshotCorrupt, match=r"bad manifest\.json"):
        backend.restore(snap, tmp_path / "clone")
    assert not (tmp_path / "clone").exists()
