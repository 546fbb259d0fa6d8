"""Pause, resume, snapshot and restore of real QEMU/TCG VMs, through the backend (no server).

One VM is booted for the module with a guest process holding a counter in memory (it writes it to
/tmp/c every 0.1 s) and two files written (one synced, one left in the guest's page cache). Restores
are driven through ``QemuBackend.restore`` as the node will: a new VM directory, ``start()``, then the
agent over the fresh serial socket. The source VM runs on after every snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import pytest_asyncio

from clawpot.agent_client import AgentClient, wait_ready
from clawpot.vm import procfs
from clawpot.vm.config import VmConfig
from clawpot.vm.handle import Vm
from clawpot.vmm.account import vmm_account
from clawpot.vmm.base import AttachRecord, Feature, VmmError
from clawpot.vmm.qemu.attached import AttachedQemu
from clawpot.vmm.qemu.backend import QemuBackend
from clawpot.vmm.qemu.confine import SNAPSHOT_MEMORY_MODE
from clawpot.vmm.qemu.process import QemuProcess
from clawpot.vmm.snapshot import (
    MANIFEST_NAME,
    MEMORY_NAME,
    STATE_NAME,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotIncompatible,
)
from clawpot.vmm.spec import BackendKind

pytestmark = pytest.mark.asyncio(loop_scope="module")

READY_TIMEOUT = 90.0
# Written to a new file and renamed: `echo > /tmp/c` truncates first, and a reader between the
# truncate and the write read an empty counter.
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/c; sleep 0.1; done"


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


@dataclasses.dataclass
class Source:
    vm: Vm
    backend: QemuBackend
    work: Path
    rootfs: Path

    @property
    def agent(self) -> AgentClient:
        assert self.vm.agent is not None
        return self.vm.agent

    @property
    def qemu(self) -> QemuProcess:
        assert isinstance(self.vm.vmm, QemuProcess)
        return self.vm.vmm


async def _counter(agent: AgentClient) -> int:
    result = await agent.run(["cat", "/tmp/c"])
    assert result.exit_code == 0, result.stderr
    return int(result.stdout)


async def _counter_advances(agent: AgentClient, above: int) -> int:
    """The counter once it is past ``above`` (the guest process runs), within a bounded wait."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        read = await agent.run(["cat", "/tmp/c"])  # missing until the loop's first round
        value = int(read.stdout) if read.exit_code == 0 and read.stdout.strip() else 0
        if value > above:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"the guest counter stayed at or below {above}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def source(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Source]:
    work = tmp_path_factory.mktemp("snap")
    backend = QemuBackend(qemu_bin, data=work / "data")
    config = VmConfig(installed_assets.kernel, installed_assets.rootfs, ready_timeout=READY_TIMEOUT)
    vm = Vm(config, backend, root=work / "vms")
    try:
        await vm.start()
        assert vm.agent is not None
        started = await vm.agent.run(
            [
                "sh",
                "-c",
                f"echo synced > /root/synced && sync && echo cached > /root/cached && "
                f"(setsid sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 &)",
            ]
        )
        assert started.exit_code == 0, started.stderr
        await _counter_advances(vm.agent, 3)
        yield Source(vm, backend, work, installed_assets.rootfs)
    finally:
        await vm.stop(grace=0)


@pytest_asyncio.fixture(loop_scope="module")
async def snapshot(source: Source) -> AsyncIterator[tuple[Path, int]]:
    """A fresh snapshot of the running source (paused around it, resumed after) and the counter value
    read just before the pause."""
    before = await _counter(source.agent)
    target = source.work / f"snapshots/s{time.monotonic_ns()}"
    await source.qemu.pause()
    try:
        await source.qemu.snapshot(target)
    finally:
        await source.qemu.resume()
    yield target, before
    shutil.rmtree(target, ignore_errors=True)


class Clone:
    def __init__(self, process: QemuProcess, agent: AgentClient) -> None:
        self.process, self.agent = process, agent


async def _restore(source: Source, snap: Path, name: str) -> Clone:
    process = source.backend.restore(snap, source.work / "vms" / name)
    await process.start()
    try:
        assert process.agent_endpoint is not None
        agent = await wait_ready(process.agent_endpoint, 30)
    except BaseException:
        await process.kill()
        raise
    return Clone(process, agent)


async def _discard(clone: Clone) -> None:
    await clone.agent.close()
    await clone.process.kill()
    shutil.rmtree(clone.process.vm_dir, ignore_errors=True)


def _qemu_children() -> set[int]:
    mine = os.getpid()
    return {
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and procfs_parent(int(p.name)) == mine and _comm(int(p.name)).startswith("qemu")
    }


def procfs_parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


async def test_qemu_declares_pause_snapshot_restore(source: Source) -> None:
    caps = source.backend.capabilities()
    assert caps.features == Feature.PAUSE | Feature.SNAPSHOT | Feature.RESTORE


async def test_pause_and_resume_keep_the_guest_memory(source: Source) -> None:
    before = await _counter(source.agent)
    await source.qemu.pause()
    assert await source.qemu.qmp.status() == "paused"
    await asyncio.sleep(0.5)
    await source.qemu.resume()
    assert await source.qemu.qmp.status() == "running"
    # Not from 0: the same process, the same memory, counting on.
    after = await _counter_advances(source.agent, before)
    assert after > before
    assert (await source.agent.run(["cat", "/root/synced", "/root/cached"])).stdout == b"synced\ncached\n"


async def test_snapshot_files_and_manifest(source: Source, snapshot: tuple[Path, int]) -> None:
    snap, _ = snapshot
    names = {p.name for p in snap.iterdir()}
    assert names == {MANIFEST_NAME, STATE_NAME, MEMORY_NAME, "drive-scratch"}
    for path in snap.iterdir():
        if path.name != MEMORY_NAME:
            assert path.stat().st_mode & 0o777 == 0o400, path
    # Clones map memory copy-on-write; QEMU 7.2 opens it read-write to do so, and runs as the VMM
    # account: that account's group may, nobody else (qemu.confine.SNAPSHOT_MEMORY_MODE).
    memory = (snap / MEMORY_NAME).stat()
    assert (memory.st_uid, memory.st_gid) == (0, vmm_account().gid)
    assert memory.st_mode & 0o777 == SNAPSHOT_MEMORY_MODE == 0o460
    # The state stream carries no RAM (x-ignore-shared): tens of KB, not the 256 MiB of guest memory.
    assert (snap / STATE_NAME).stat().st_size < 2 * 1024 * 1024
    assert (snap / MEMORY_NAME).stat().st_size == 256 * 1024 * 1024
    # The base image is never copied: nothing in the snapshot holds as many blocks as the rootfs.
    rootfs_blocks = source.rootfs.stat().st_blocks
    assert all(p.stat().st_blocks < rootfs_blocks for p in snap.iterdir())
    manifest = (snap / MANIFEST_NAME).read_text()
    assert str(source.rootfs) in manifest and '"backend": "qemu"' in manifest
    # The source runs on.
    assert await source.qemu.qmp.status() == "running"


async def test_two_restores_continue_the_counter_and_diverge(
    source: Source, snapshot: tuple[Path, int]
) -> None:
    snap, before = snapshot
    clones = await asyncio.gather(_restore(source, snap, "c1"), _restore(source, snap, "c2"))
    try:
        for clone in clones:
            # The counter continues from where it was, not from 0, and keeps counting.
            at_restore = await _counter(clone.agent)
            assert at_restore >= before
            await _counter_advances(clone.agent, at_restore)
            files = await clone.agent.run(["cat", "/root/synced", "/root/cached"])
            assert files.stdout == b"synced\ncached\n", files.stderr
        for index, clone in enumerate(clones):
            wrote = await clone.agent.run(["sh", "-c", f"echo clone{index} > /root/mine && sync"])
            assert wrote.exit_code == 0
        for index, clone in enumerate(clones):
            assert (await clone.agent.run(["cat", "/root/mine"])).stdout == f"clone{index}\n".encode()
        assert (await source.agent.run(["test", "-e", "/root/mine"])).exit_code == 1
        # Side by side, each its own QEMU and its own copy of the writable layer.
        pids = {clone.process.pid for clone in clones}
        assert len(pids) == 2 and all(pid is not None and procfs.is_alive(pid) for pid in pids)
        layers = [clone.process.vm_dir / "scratch.ext4" for clone in clones]
        assert all(layer.exists() for layer in layers)
        assert layers[0].stat().st_ino != layers[1].stat().st_ino
    finally:
        await asyncio.gather(*(_discard(clone) for clone in clones))


def _copy_snapshot(snap: Path, target: Path) -> Path:
    subprocess.run(["cp", "-a", "--sparse=always", str(snap), str(target)], check=True)
    return target


def _flip_byte(path: Path, offset: int) -> None:
    path.chmod(0o600)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _first_data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        return os.lseek(f.fileno(), 0, os.SEEK_DATA) + 100


@pytest.mark.parametrize("damage", ["state", "memory", "kernel"])
async def test_a_corrupt_or_incompatible_snapshot_is_refused_and_leaves_nothing(
    source: Source, snapshot: tuple[Path, int], damage: str
) -> None:
    snap, _ = snapshot
    bad = _copy_snapshot(snap, source.work / f"bad-{damage}")
    try:
        if damage == "kernel":
            manifest = bad / MANIFEST_NAME
            manifest.chmod(0o600)
            kernel_copy = source.work / "other-vmlinux"
            kernel_copy.write_bytes(b"not the kernel the snapshot was taken with")
            text = manifest.read_text()
            kernel = str(source.qemu.spec.kernel)
            manifest.write_text(text.replace(f'"path": "{kernel}"', f'"path": "{kernel_copy}"', 1))
            expected: type[SnapshotError] = SnapshotIncompatible
            match = "another kernel"
        else:
            _flip_byte(bad / damage, _first_data_offset(bad / damage))
            expected, match = SnapshotCorrupt, f"{damage} does not match its digest"
        vm_dir = source.work / "vms" / f"refused-{damage}"
        before = _qemu_children()
        process = source.backend.restore(bad, vm_dir)
        with pytest.raises(expected, match=match):
            await process.start()
        assert process.pid is None  # refused before QEMU was spawned
        assert _qemu_children() == before
        assert not vm_dir.exists()
    finally:
        shutil.rmtree(bad, ignore_errors=True)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path, root_required: None) -> Iterator[Path]:
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_leaves_no_partial_snapshot_and_the_vm_running(
    source: Source, tiny_tmpfs: Path
) -> None:
    before = await _counter(source.agent)
    await source.qemu.pause()
    try:
        with pytest.raises(SnapshotError, match="no space left"):
            await source.qemu.snapshot(tiny_tmpfs / "snap")
        assert os.listdir(tiny_tmpfs) == []  # no snapshot, no hidden partial directory
    finally:
        await source.qemu.resume()
    assert await source.qemu.qmp.status() == "running"
    await _counter_advances(source.agent, before)
    # And a snapshot where there is room still works after the failed one.
    target = source.work / "after-full"
    await source.qemu.pause()
    try:
        await source.qemu.snapshot(target)
    finally:
        await source.qemu.resume()
    assert (target / MANIFEST_NAME).exists()
    shutil.rmtree(target)


async def test_a_snapshot_needs_a_paused_vm(source: Source) -> None:
    with pytest.raises(VmmError, match="pause it first"):
        await source.qemu.snapshot(source.work / "not-paused")
    assert not (source.work / "not-paused").exists()


async def test_a_vm_paused_before_a_server_restart_is_resumed_after_it(source: Source) -> None:
    # What the next server does with a VM it finds running (VmmBackend.attach): here without taking
    # the console back, which the source's own handle still reads.
    assert source.vm.directory is not None and source.qemu.pid is not None
    record = AttachRecord(
        source.qemu.pid, procfs.start_ticks(source.qemu.pid), source.vm.directory.path, None
    )
    before = await _counter(source.agent)
    await source.qemu.pause()
    attached = AttachedQemu(record, BackendKind.QEMU)
    try:
        assert await attached.status() == "paused"  # still paused, as the previous server left it
        await attached.resume()
        assert await attached.status() == "running"
        await attached.pause()
        assert await source.qemu.qmp.status() == "paused"
        await attached.resume()
    finally:
        attached.detach()
    await _counter_advances(source.agent, before)


async def test_a_restored_vm_can_be_snapshotted_and_restored_again(
    source: Source, snapshot: tuple[Path, int]
) -> None:
    # A pool VM or a clone is itself a restore: its RAM travels in the stream (QEMU 7.2 skips only
    # shared RAM), and its snapshot restores like any other.
    snap, before = snapshot
    clone = await _restore(source, snap, "gen1")
    second = source.work / "snapshots" / "of-a-clone"
    try:
        wrote = await clone.agent.run(["sh", "-c", "echo generation1 > /root/gen"])
        assert wrote.exit_code == 0
        at_snapshot = await _counter(clone.agent)
        await clone.process.pause()
        await clone.process.snapshot(second)
        await clone.process.resume()
        manifest = (second / MANIFEST_NAME).read_text()
        assert '"ram": "stream"' in manifest
        assert (second / MEMORY_NAME).stat().st_blocks == 0  # all holes: the RAM is in the stream
        await _counter_advances(clone.agent, at_snapshot)
    finally:
        await _discard(clone)
    grandchild = await _restore(source, second, "gen2")
    try:
        assert (await grandchild.agent.run(["cat", "/root/gen"])).stdout == b"generation1\n"
        assert await _counter(grandchild.agent) >= max(before, at_snapshot)
        await _counter_advances(grandchild.agent, at_snapshot)
    finally:
        await _discard(grandchild)
        shutil.rmtree(second, ignore_errors=True)


async def test_deleting_a_snapshot_does_not_pull_memory_from_under_its_clones(
    source: Source, snapshot: tuple[Path, int]
) -> None:
    # Clones map the memory file privately: unlinking it (never truncating it) leaves their mapping
    # intact, the space is freed when the last clone exits. The node may refuse deletion for other
    # reasons (a pool refilling from it), but a running clone never breaks.
    snap, before = snapshot
    copy = _copy_snapshot(snap, source.work / "doomed")
    clone = await _restore(source, copy, "orphan")
    try:
        shutil.rmtree(copy)
        value = await _counter_advances(clone.agent, before)
        wrote = await clone.agent.run(["sh", "-c", "head -c 50000000 /dev/zero > /tmp/big && sync"])
        assert wrote.exit_code == 0, wrote.stderr
        await _counter_advances(clone.agent, value)
    finally:
        await _discard(clone)
