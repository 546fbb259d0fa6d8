"""QEMU snapshots (7.2 and later): a migration stream without RAM, the RAM file, the writable layer.

Taking one, of a paused VM (``capture`` then ``SnapshotWriter.seal``; ``QemuProcess.snapshot`` does both):

1. ``migrate-set-capabilities x-ignore-shared`` (7.2 has no command-line form), ``getfd`` of the new
   ``state`` file passed over the QMP socket, ``migrate fd:NAME`` (not ``exec:``: the sandbox forbids
   spawning, and not ``file:``: 7.2 lacks it). Guest RAM is a shared memfd, so the stream holds only the
   device state (~72 KB, 3-11 ms). When the migration completes QEMU has drained and flushed its block
   layer and deactivated the images: the disks on the host are exactly what the guest's memory
   believes was written. There is no guest flush (QMP cannot ask the guest kernel to sync): data the
   guest kernel holds in its page cache is in the RAM image instead, so memory + disk are consistent
   together, as after a power cut of a machine whose RAM survived.
2. Guest RAM: QEMU's memfd read through ``/proc/PID/fd`` and copied into ``memory`` (data extents only;
   pages the guest never touched stay holes).
3. Each writable drive copied into ``drive-<id>`` (reflink where the filesystem can, else data extents
   in the kernel). The base image is never copied: the manifest names it and its identity.

The VM stays paused throughout (``postmigrate``, which ``cont`` resumes); the caller resumes it.
Hashing and the manifest (``seal``) may run after the resume. Any failure (ENOSPC, a migration
error) removes the partial directory and leaves the VM as it was: paused, resumable.

Restoring (the ``QEMU_RESTORE`` recipe in ``boot``): the same devices with guest RAM a private
copy-on-write mapping of ``memory`` (``share=off``), ``-incoming defer -S``; over QMP the same capability,
``getfd`` + ``migrate-incoming fd:NAME``; wait for ``paused``; ``cont``. Clones of one snapshot share the
file's page cache and each owns only the pages it writes.

A restored VM (a clone, a pool VM) can be snapshotted too, at a higher price: its RAM is a private
mapping that ``x-ignore-shared`` does not skip (7.2 skips only shared RAM), so the RAM travels in the
stream (~60-70 MB for a 256 MiB guest) and the snapshot's ``memory`` file is all holes
(``backend_options["ram"] == "stream"``). Restores of it use the same recipe; they load every page
(slower, ~150 ms more) and own their RAM instead of sharing it. QEMU >= 9 (``mapped-ram``) could write a
clone's RAM to a file instead.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clawpot import limits
from clawpot.vmm.base import VmmConfigError, VmmError
from clawpot.vmm.qemu.qmp import QmpControl, QmpError
from clawpot.vmm.snapshot import (
    DRIVE_PREFIX,
    MEMORY_NAME,
    STATE_NAME,
    SnapshotError,
    SnapshotWriter,
    copy_sparse,
    describe_oserror,
)

if TYPE_CHECKING:
    from clawpot.vmm.qemu.process import QemuProcess

# QEMU run states in which the guest CPUs are stopped and a snapshot may be taken.
PAUSED_STATES = frozenset({"paused", "postmigrate"})
_IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
_FD_NAME = "clawpot-snapshot"
_POLL = 0.001
# What /proc/PID/fd/N of QEMU's RAM memfd links to.
_MEMFD_LINK = "/memfd:memory-backend-memfd"


@functools.cache
def qemu_version(binary: str) -> str:
    """``7.2.22`` for ``qemu-system-x86_64 --version`` ("QEMU emulator version 7.2.22 (Debian ...)")."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise VmmError(f"cannot ask {binary} for its version: {exc}") from exc
    words = out.stdout.split()
    if "version" in words and words.index("version") + 1 < len(words):
        return words[words.index("version") + 1]
    raise VmmError(f"{binary} --version: unexpected output {out.stdout[:80]!r}")


async def capture(qemu: QemuProcess, directory: Path) -> SnapshotWriter:
    """Write the paused VM's state, RAM and writable drives into a partial snapshot for ``directory``.

    Returns the writer to ``seal``; on failure nothing is left and the VM is still paused.
    """
    status = await qemu.qmp.status()
    if status not in PAUSED_STATES:
        raise VmmError(f"cannot snapshot a VM that is {status}: pause it first")
    pid = qemu.pid
    if pid is None:
        raise VmmError("QEMU is not running")
    writer = await asyncio.to_thread(SnapshotWriter, directory)
    try:
        await save_state(qemu.qmp, writer.path(STATE_NAME))
        await asyncio.to_thread(_copy_files, pid, qemu, writer)
    except BaseException as exc:
        await asyncio.to_thread(writer.discard)
        if isinstance(exc, OSError):
            raise SnapshotError(f"snapshot {directory.name}: {describe_oserror(exc)}") from exc
        raise
    return writer


def ram_in_stream(qemu: QemuProcess) -> bool:
    """A restored VM's RAM is a private mapping: x-ignore-shared does not skip it, so it travels in the
    stream, and the snapshot's memory file is all holes (restores map it, then load every page)."""
    return qemu.ram.snapshot_memory is not None


def _copy_files(pid: int, qemu: QemuProcess, writer: SnapshotWriter) -> None:
    if ram_in_stream(qemu):
        fd = os.open(writer.path(MEMORY_NAME), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        try:
            os.ftruncate(fd, qemu.spec.memory_mib * 1024 * 1024)
        finally:
            os.close(fd)
    else:
        ram = open_guest_ram(pid)
        try:
            copy_sparse(ram, writer.path(MEMORY_NAME), mode=0o400)
        finally:
            os.close(ram)
    for drive in qemu.spec.drives:
        if not drive.read_only:
            copy_sparse(drive.path, writer.path(DRIVE_PREFIX + drive.drive_id), mode=0o400)


def open_guest_ram(pid: int) -> int:
    """A read-only fd of QEMU ``pid``'s guest RAM memfd."""
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith(_MEMFD_LINK):
            return os.open(entry, os.O_RDONLY | os.O_CLOEXEC)
    raise VmmError(f"QEMU {pid} has no guest RAM memfd (started by an older Clawpot?)")


async def save_state(qmp: QmpControl, path: Path) -> None:
    """Migrate the device state (RAM left out) into the new file ``path``; returns once complete."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        await qmp.execute_all(
            ("migrate-set-capabilities", _IGNORE_SHARED),
            ("getfd", {"fdname": _FD_NAME}),
            ("migrate", {"uri": f"fd:{_FD_NAME}"}),
            fd=fd,
        )
    finally:
        os.close(fd)  # QEMU has its own copy, closed when the migration ends
    timeout = limits.SNAPSHOT_SAVE_TIMEOUT
    deadline = time.monotonic() + timeout
    while True:
        reply = await qmp.execute("query-migrate")
        status = reply.get("status") if isinstance(reply, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            detail = reply.get("error-desc", status) if isinstance(reply, dict) else status
            if "No space left" in str(detail):
                raise OSError(28, "No space left on device")
            raise SnapshotError(f"QEMU could not save the VM state: {detail}")
        if time.monotonic() > deadline:
            await _cancel(qmp)
            raise SnapshotError(f"QEMU did not save the VM state within {timeout:.0f} s")
        await asyncio.sleep(_POLL)


async def _cancel(qmp: QmpControl) -> None:
    try:
        await qmp.execute("migrate_cancel")
    except QmpError:
        pass


async def load_state(qemu: QemuProcess, path: Path) -> None:
    """Feed ``path`` to a QEMU started with ``-incoming defer -S``; returns once the state is loaded
    (QEMU ``paused``). QEMU exiting meanwhile (it refused the stream) is a ``VmmConfigError`` with its
    reason."""
    timeout = limits.SNAPSHOT_LOAD_TIMEOUT
    deadline = time.monotonic() + timeout
    child = qemu.child
    status = None
    while status is None:  # QMP comes up a few ms after the spawn
        if child is not None and child.exit_info is not None:
            raise VmmConfigError(f"QEMU did not start: {child.exit_info.reason}")
        if time.monotonic() > deadline:
            raise VmmError(f"QEMU's QMP did not come up within {timeout:.0f} s")
        if qemu.files.qmp_socket.exists():
            try:
                status = await qemu.qmp.status()
            except QmpError:
                pass
        if status is None:
            await asyncio.sleep(_POLL)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await qemu.qmp.execute_all(
            ("migrate-set-capabilities", _IGNORE_SHARED),
            ("getfd", {"fdname": _FD_NAME}),
            ("migrate-incoming", {"uri": f"fd:{_FD_NAME}"}),
            fd=fd,
        )
    finally:
        os.close(fd)
    while True:
        if child is not None and child.exit_info is not None:
            raise VmmConfigError(f"QEMU refused the snapshot: {child.exit_info.reason}")
        try:
            status = await qemu.qmp.status()
        except QmpError:
            if child is not None and child.exit_info is None:
                await child.wait_at_most(0.5)  # QMP went away: QEMU is probably exiting, say why
            if child is not None and child.exit_info is not None:
                raise VmmConfigError(f"QEMU refused the snapshot: {child.exit_info.reason}") from None
            raise
        if status == "paused":
            return
        if status != "inmigrate":
            raise VmmConfigError(f"QEMU is {status} after loading the snapshot")
        if time.monotonic() > deadline:
            raise VmmError(f"QEMU did not load the snapshot within {timeout:.0f} s")
        await asyncio.sleep(_POLL)
