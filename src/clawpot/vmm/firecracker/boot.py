"""How a Firecracker VM comes to life: the default boot recipe, one named step per line.

    FIRECRACKER_BOOT:
        write the configuration        the whole VM as --config-file JSON (validated before writing)
        prepare files                  refuse a leftover API socket, create the log, read the console FIFO
                                       undo: stop reading the console
        spawn firecracker              firecracker --api-sock ... --config-file ..., watched by a pidfd
                                       undo: SIGKILL, reap, remove the sockets
        wait for the microVM to start  its log says the microVM from the file started (or it exited)

``FirecrackerVmm.start()`` runs it (``clawpot.vmm.steps``). Variants edit a copy. The jailer, for
instance, is a swap of the launch step and one more step before it::

    FIRECRACKER_BOOT.replace(SPAWN, Step("spawn under the jailer", jailed_launch, undo=kill))
                    .insert_before(SPAWN_UNDER_JAILER, Step("prepare the jail", link_files, undo=unlink))

A restore (``FirecrackerBackend.restore``) is the same list with the configuration swapped for the
snapshot and the start for a load::

    FIRECRACKER_RESTORE:
        verify the snapshot            manifest, firecracker version, kernel and rootfs, sizes, digests
        copy the writable layer        the snapshot's writable drives into the VM directory
                                       undo: remove the copies
        prepare files, spawn firecracker (no --config-file, in the VM directory)
        wait for the API               the API socket answers
        load the snapshot              PUT /snapshot/load (File memory backend, network_overrides)
        resume the guest               PATCH /vm Resumed

Each step is one call on the handle, so a replacement uses the same public pieces
(``vmm.process.launch(argv)``, ``vmm.kill``) instead of reaching into the handle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clawpot.vmm.firecracker import snapshots
from clawpot.vmm.steps import Recipe, Step

if TYPE_CHECKING:
    from clawpot.vmm.firecracker.handle import FirecrackerVmm

WRITE_CONFIG = "write the configuration"
PREPARE_FILES = "prepare files"
SPAWN = "spawn firecracker"
WAIT_STARTED = "wait for the microVM to start"
VERIFY_SNAPSHOT = "verify the snapshot"
COPY_DRIVES = "copy the writable layer"
WAIT_API = "wait for the API"
LOAD_SNAPSHOT = "load the snapshot"
RESUME = "resume the guest"


async def write_config(vmm: FirecrackerVmm) -> None:
    vmm.write_config()


async def prepare_files(vmm: FirecrackerVmm) -> None:
    vmm.process.prepare_output()


async def close_files(vmm: FirecrackerVmm) -> None:
    vmm.process.close_output()


async def spawn(vmm: FirecrackerVmm) -> None:
    vmm.process.launch()


async def kill(vmm: FirecrackerVmm) -> None:
    await vmm.kill()


async def wait_started(vmm: FirecrackerVmm) -> None:
    await vmm.wait_started()


FIRECRACKER_BOOT: Recipe[FirecrackerVmm] = Recipe(
    [
        Step(WRITE_CONFIG, write_config),
        Step(PREPARE_FILES, prepare_files, undo=close_files),
        Step(SPAWN, spawn, undo=kill),
        Step(WAIT_STARTED, wait_started),
    ]
)


async def verify_snapshot(vmm: FirecrackerVmm) -> None:
    await snapshots.verify(vmm)


async def copy_drives(vmm: FirecrackerVmm) -> None:
    await snapshots.copy_drives(vmm)


async def remove_drives(vmm: FirecrackerVmm) -> None:
    vmm.remove_drives()


async def wait_api(vmm: FirecrackerVmm) -> None:
    await vmm.wait_api()


async def load_snapshot(vmm: FirecrackerVmm) -> None:
    await snapshots.load(vmm)


async def resume(vmm: FirecrackerVmm) -> None:
    await vmm.resume()


FIRECRACKER_RESTORE: Recipe[FirecrackerVmm] = (
    FIRECRACKER_BOOT.replace(WRITE_CONFIG, Step(VERIFY_SNAPSHOT, verify_snapshot))
    .insert_after(VERIFY_SNAPSHOT, Step(COPY_DRIVES, copy_drives, undo=remove_drives))
    .replace(WAIT_STARTED, Step(WAIT_API, wait_api))
    .insert_after(WAIT_API, Step(LOAD_SNAPSHOT, load_snapshot), Step(RESUME, resume))
)
