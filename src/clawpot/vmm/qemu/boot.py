"""How a QEMU VM comes to life: the default boot recipe, one named step per line.

    QEMU_BOOT:
        validate                     kernel, drives and sockets make sense (nothing created yet)
        choose the accelerator       the forced one, else the cached KVM probe (may boot a probe VM once)
        prepare files                the VM directory, stale sockets removed (live ones refused), console
                                     FIFOs and their capped reader; unprivileged (the default), what
                                     QEMU is handed: listening sockets, drive/TAP/kernel fds, the chroot
                                     undo: stop reading the console, close the fds, remove sockets,
                                     console, chroot and logs
        build the command line       qemu-system-x86_64 -M microvm ... for the spec and the fds (pure)
        create the cgroup            the VM's own cgroup: CPU, memory, tasks (``clawpot.vmm.cgroups``)
                                     undo: remove it
        spawn qemu                   the command line, in the cgroup before QEMU's first instruction (a
                                     shell joins it as root and execs setpriv, which execs QEMU as
                                     clawpot-vmm), output to qemu.log, watched by a pidfd
                                     undo: SIGKILL, reap, remove the sockets
        wait until QMP says running  QMP answers and query-status is "running" (QEMU exiting first:
                                     it refused the configuration, VmmConfigError)

    QEMU_RESTORE (a VM from a snapshot, ``QemuBackend.restore``): QEMU_BOOT with
        verify the snapshot          manifest, backend version, kernel and rootfs, sizes and digests
        copy the writable layer      the snapshot's writable drives into the VM directory (reflink or
                                     data extents; never the base image)   undo: remove the copies
        ... validate, choose the accelerator (the snapshot's), prepare files, build the command line
        (guest RAM a private mapping of the snapshot's memory file, -incoming defer -S), create the
        cgroup, spawn ...
        load the snapshot            QMP: x-ignore-shared, getfd + migrate-incoming fd:, until paused
        resume the guest             QMP cont
        wait until QMP says running

``QemuProcess.start()`` runs it (``clawpot.vmm.steps``); variants edit a copy (``replace``,
``insert_before``, ...). Each step is one call on the process object, so a replacement (a launcher
wrapping QEMU, say) uses the same public pieces (``process.launch(argv)``, ``process.kill``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clawpot.vmm.steps import Recipe, Step

if TYPE_CHECKING:
    from clawpot.vmm.qemu.process import QemuProcess

VALIDATE = "validate"
CHOOSE_ACCEL = "choose the accelerator"
BUILD_COMMAND = "build the command line"
PREPARE_FILES = "prepare files"
CREATE_CGROUP = "create the cgroup"
SPAWN = "spawn qemu"
WAIT_RUNNING = "wait until QMP says running"
VERIFY_SNAPSHOT = "verify the snapshot"
COPY_DRIVES = "copy the writable layer"
LOAD_STATE = "load the snapshot"
RESUME = "resume the guest"


async def validate(qemu: QemuProcess) -> None:
    qemu.validate()


async def choose_accel(qemu: QemuProcess) -> None:
    await qemu.choose_accel()


async def build_command(qemu: QemuProcess) -> None:
    qemu.build_command()


async def prepare_files(qemu: QemuProcess) -> None:
    qemu.prepare_files()


async def remove_files(qemu: QemuProcess) -> None:
    qemu.remove_files()


async def create_cgroup(qemu: QemuProcess) -> None:
    qemu.create_cgroup()


async def remove_cgroup(qemu: QemuProcess) -> None:
    qemu.remove_cgroup()


async def spawn(qemu: QemuProcess) -> None:
    qemu.launch()


async def kill(qemu: QemuProcess) -> None:
    await qemu.kill()


async def wait_running(qemu: QemuProcess) -> None:
    await qemu.wait_running()


async def verify_snapshot(qemu: QemuProcess) -> None:
    await qemu.verify_snapshot()


async def copy_drives(qemu: QemuProcess) -> None:
    await qemu.copy_drives()


async def remove_drives(qemu: QemuProcess) -> None:
    qemu.remove_drives()


async def load_state(qemu: QemuProcess) -> None:
    await qemu.load_state()


async def resume(qemu: QemuProcess) -> None:
    await qemu.resume()


QEMU_BOOT: Recipe[QemuProcess] = Recipe(
    [
        Step(VALIDATE, validate),
        Step(CHOOSE_ACCEL, choose_accel),
        Step(PREPARE_FILES, prepare_files, undo=remove_files),
        Step(BUILD_COMMAND, build_command),
        Step(CREATE_CGROUP, create_cgroup, undo=remove_cgroup),
        Step(SPAWN, spawn, undo=kill),
        Step(WAIT_RUNNING, wait_running),
    ]
)

QEMU_RESTORE: Recipe[QemuProcess] = QEMU_BOOT.insert_before(
    VALIDATE,
    Step(VERIFY_SNAPSHOT, verify_snapshot),
    Step(COPY_DRIVES, copy_drives, undo=remove_drives),
).insert_after(SPAWN, Step(LOAD_STATE, load_state), Step(RESUME, resume))
