"""How a Firecracker VM comes to life: the default boot recipe, one named step per line.

    FIRECRACKER_BOOT:
        write the configuration        the whole VM as --config-file JSON (validated before writing)
        prepare files                  refuse a leftover API socket, create the log, read the console FIFO
                                       undo: stop reading the console
        create the cgroup              the VM's own cgroup: CPU, memory, tasks (``clawpot.vmm.cgroups``)
                                       undo: remove it
        spawn firecracker              firecracker --api-sock ... --config-file ..., in the cgroup before
                                       its first instruction, watched by a pidfd
                                       undo: SIGKILL, reap, remove the sockets
        wait for the microVM to start  its log says the microVM from the file started (or it exited)

``FirecrackerVmm.start()`` runs it (``clawpot.vmm.steps``). Variants edit a copy. The jailer (the
default: ``JAILED_BOOT``, ``clawpot.vmm.firecracker.jail``) is a swap of the launch step and one more
step before the files, and the jailer makes the cgroup itself::

    FIRECRACKER_BOOT.replace(SPAWN, Step("spawn firecracker under the jailer", launch, undo=kill))
                    .remove(CREATE_CGROUP)
                    .insert_before(PREPARE_FILES, Step("prepare the jail", prepare, undo=remove))

A restore (``FirecrackerBackend.restore``) is the same list with the configuration swapped for the
snapshot and the start for a load::

    FIRECRACKER_RESTORE:
        verify the snapshot            manifest, firecracker version, kernel and rootfs, sizes, digests
        copy the writable layer        the snapshot's writable drives into the VM directory
                                       undo: remove the copies
        prepare files, create the cgroup, spawn firecracker (no --config-file, in the VM directory)
        wait for the API               the API socket answers
        load the snapshot              PUT /metrics (its FIFO), PUT /snapshot/load (File memory backend,
                                       network_overrides)
        resume the guest               PATCH /vm Resumed

Each step is one call on the handle, so a replacement uses the same public pieces
(``vmm.process.launch(argv)``, ``vmm.kill``) instead of reaching into the handle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clawpot.vmm.firecracker import jail, snapshots
from clawpot.vmm.steps import Recipe, Step

if TYPE_CHECKING:
    from clawpot.vmm.firecracker.handle import FirecrackerVmm

WRITE_CONFIG = "write the configuration"
PREPARE_FILES = "prepare files"
CREATE_CGROUP = "create the cgroup"
SPAWN = "spawn firecracker"
WAIT_STARTED = "wait for the microVM to start"
VERIFY_SNAPSHOT = "verify the snapshot"
COPY_DRIVES = "copy the writable layer"
WAIT_API = "wait for the API"
LOAD_SNAPSHOT = "load the snapshot"
RESUME = "resume the guest"
PREPARE_JAIL = "prepare the jail"
SPAWN_JAILED = "spawn firecracker under the jailer"


async def write_config(vmm: FirecrackerVmm) -> None:
    vmm.write_config()


async def prepare_files(vmm: FirecrackerVmm) -> None:
    vmm.process.prepare_output()


async def close_files(vmm: FirecrackerVmm) -> None:
    vmm.process.close_output()


async def create_cgroup(vmm: FirecrackerVmm) -> None:
    vmm.create_cgroup()


async def remove_cgroup(vmm: FirecrackerVmm) -> None:
    vmm.remove_cgroup()


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
        Step(CREATE_CGROUP, create_cgroup, undo=remove_cgroup),
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


def jailed(recipe: Recipe[FirecrackerVmm]) -> Recipe[FirecrackerVmm]:
    """``recipe`` (boot or restore) with firecracker launched by the jailer (``jail``): the launch
    swapped, the jail prepared before the output files, no cgroup step (the jailer makes it)."""
    return (
        recipe.replace(SPAWN, Step(SPAWN_JAILED, jail.launch, undo=kill))
        .remove(CREATE_CGROUP)
        .insert_before(PREPARE_FILES, Step(PREPARE_JAIL, jail.prepare, undo=jail.remove))
    )


# The defaults: what `clawpot-server` and `clawpot-driver` run unless given --no-jailer.
JAILED_BOOT = jailed(FIRECRACKER_BOOT)
JAILED_RESTORE = jailed(FIRECRACKER_RESTORE)
