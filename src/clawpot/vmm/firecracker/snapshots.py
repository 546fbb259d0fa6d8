"""Firecracker snapshots: pause (``PATCH /vm``), ``PUT /snapshot/create``, ``PUT /snapshot/load``.

Taking one, of a paused VM: ``PUT /snapshot/create`` (Full) writes the device state (``state``) and
guest memory (``memory``) into the partial snapshot directory; each writable drive is then copied
(Firecracker's virtio-blk writes straight to the file, so a paused VM's disk is what its memory
believes). The base image is named in the manifest, never copied.

Restoring (``boot.FIRECRACKER_RESTORE``): the snapshot verified, its writable drives copied into the
new VM directory, a fresh firecracker started in that directory without a configuration file,
``PUT /snapshot/load`` (memory backend File: Firecracker maps the file privately, so clones share its
page cache), then ``PATCH /vm Resumed``. What the snapshot recorded as paths is reopened at load:
Clawpot configures a VM's own files (writable drive, vsock socket) by their names relative to the VM
directory and runs firecracker inside it, so a restore in another directory opens its own copies and
binds its own vsock socket, never the source's. A clone's NICs move to its own TAPs with
``network_overrides`` (Firecracker >= 1.12; older versions keep the snapshot's TAP names).

What a user gets on a KVM host: pause/resume, full snapshots and restores with the agent answering
again over a new hybrid-vsock socket (existing connections are reset by the guest's vsock transport
reset on load; the agent's handshake resynchronises), each clone on its own TAP and its own writable
layer. On this host (kvm_pvm) the guest kernel dies within seconds whatever we do; the test proves the
API sequence, a console that continues after the load, and crash detection of the restored process.

Under the jailer (the default) firecracker sees only its chroot: it writes a snapshot's state and memory
there, under names no restore link uses (a restored VM has its source snapshot's files linked in: never
overwritten), and they are moved into the snapshot directory right after, owned by root and readable
by the VMM account's group (0640: another jailed firecracker can restore them, no other user can read
guest memory). A restore links the snapshot's state and memory into the new VM's chroot.

With Firecracker >= 1.16, ``PUT /snapshot/load`` also takes ``vsock_override`` (a new ``uds_path``):
the relative-path trick would no longer be needed for the vsock socket, and a restored VM could put its
socket anywhere (a jail, a shorter path). Drives would still be reopened at their recorded paths
(``PATCH /drives`` after load can move them), so the relative names stay the simplest scheme.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from clawpot.vmm.base import VmmError
from clawpot.vmm.firecracker import models
from clawpot.vmm.snapshot import (
    DRIVE_PREFIX,
    MEMORY_NAME,
    STATE_NAME,
    Snapshot,
    SnapshotError,
    SnapshotWriter,
    copy_sparse,
    describe_oserror,
    open_snapshot,
    spec_entry,
)
from clawpot.vmm.spec import BackendKind

if TYPE_CHECKING:
    from clawpot.vmm.firecracker.handle import FirecrackerVmm

# The first release whose /snapshot/load takes network_overrides.
NETWORK_OVERRIDES_SINCE = (1, 12)


@functools.cache
def version_of(binary: Path) -> str:
    from clawpot.vmm.firecracker.backend import firecracker_version

    try:
        return firecracker_version(binary)
    except Exception as exc:
        raise VmmError(f"cannot ask {binary} for its version: {exc}") from exc


def supports_network_overrides(version: str) -> bool:
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return parts >= NETWORK_OVERRIDES_SINCE


async def capture(vmm: FirecrackerVmm, directory: Path) -> SnapshotWriter:
    info = await vmm.client.instance_info()
    if info.state is not models.InstanceState.PAUSED:
        raise VmmError(f"cannot snapshot a VM that is {info.state}: pause it first")
    writer = await asyncio.to_thread(SnapshotWriter, directory)
    try:
        state, memory = writer.path(STATE_NAME), writer.path(MEMORY_NAME)
        await vmm.client.create_snapshot(
            models.SnapshotCreate(
                snapshot_path=vmm.snapshot_target(state), mem_file_path=vmm.snapshot_target(memory)
            )
        )
        await asyncio.to_thread(vmm.collect_snapshot_file, state)
        await asyncio.to_thread(vmm.collect_snapshot_file, memory)
        await asyncio.to_thread(_copy_drives, vmm, writer)
    except BaseException as exc:
        await asyncio.to_thread(writer.discard)
        if isinstance(exc, OSError):
            raise SnapshotError(f"snapshot {directory.name}: {describe_oserror(exc)}") from exc
        if "No space left" in str(exc):
            raise SnapshotError(f"snapshot {directory.name}: {describe_oserror(OSError(28, ''))}") from exc
        raise
    return writer


def _copy_drives(vmm: FirecrackerVmm, writer: SnapshotWriter) -> None:
    for drive in vmm.spec.drives:
        if not drive.read_only:
            copy_sparse(drive.path, writer.path(DRIVE_PREFIX + drive.drive_id), mode=0o400)


def seal(vmm: FirecrackerVmm, writer: SnapshotWriter) -> Snapshot:
    with writer:
        drive_files = {d.drive_id: DRIVE_PREFIX + d.drive_id for d in vmm.spec.drives if not d.read_only}
        return writer.seal(
            backend=BackendKind.FIRECRACKER,
            backend_version=version_of(vmm.process.binary),
            spec=spec_entry(vmm.spec, drive_files),
        )


async def verify(vmm: FirecrackerVmm) -> None:
    snap = vmm.snapshot_source()
    version = await asyncio.to_thread(version_of, vmm.process.binary)
    vmm.restore_from = await asyncio.to_thread(
        open_snapshot, snap.directory, backend=BackendKind.FIRECRACKER, backend_version=version
    )


async def copy_drives(vmm: FirecrackerVmm) -> None:
    vmm.vm_dir.mkdir(parents=True, exist_ok=True)
    vmm.restored_drives = await asyncio.to_thread(vmm.snapshot_source().copy_drives, vmm.vm_dir)


async def load(vmm: FirecrackerVmm) -> None:
    snap = vmm.snapshot_source()
    overrides = None
    if vmm.spec.network_interfaces and supports_network_overrides(version_of(vmm.process.binary)):
        overrides = tuple(
            models.NetworkOverride(iface_id=n.iface_id, host_dev_name=n.tap_name)
            for n in vmm.spec.network_interfaces
        )
    if vmm.files.metrics is not None:  # not part of a snapshot; allowed before the load
        await vmm.client.put_metrics(models.Metrics(metrics_path=vmm.seen(vmm.files.metrics)))
    await vmm.client.load_snapshot(
        models.SnapshotLoad(
            # Jailed: both are linked into the chroot (``jail.prepare``).
            snapshot_path=vmm.seen(snap.state.resolve()),
            mem_backend=models.MemBackend(
                backend_type=models.MemBackendType.FILE, backend_path=vmm.seen(snap.memory.resolve())
            ),
            resume_vm=False,
            network_overrides=overrides,
        )
    )
