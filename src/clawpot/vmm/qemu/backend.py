"""``QemuBackend``: finds qemu-system-x86_64, chooses the accelerator and the agent transport,
and hands out ``QemuProcess`` objects.

Accelerator: the constructor's ``accel``, else ``$CLAWPOT_QEMU_ACCEL`` (``kvm``/``tcg``), else the
probe in ``clawpot.vmm.probe`` (cached per host kernel). Agent transport: vhost-vsock when
/dev/vhost-vsock can be opened (each VM gets its own random CID), else a virtio-serial port.

Every VM's QEMU runs as the VMM account (``run_as``, ``clawpot-vmm``), chrooted, with its files handed
over as fds (``confine``).

Pause, resume, snapshot and restore work on every QEMU VM (``Feature.PAUSE | SNAPSHOT | RESTORE``): guest
RAM is always a shared memfd (``cmdline.RamBacking``); ``snapshots`` says how and what 7.2 allows.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from clawpot.vmm.account import VMM_USER
from clawpot.vmm.base import (
    AttachRecord,
    Capabilities,
    Feature,
    VmmBackend,
    VmmConfigError,
    VmmUnsupported,
)
from clawpot.vmm.probe import cached_probe, probe_accelerator
from clawpot.vmm.qemu.attached import AttachedQemu
from clawpot.vmm.qemu.boot import QEMU_BOOT, QEMU_RESTORE
from clawpot.vmm.qemu.cmdline import QEMU_BINARY, Accel
from clawpot.vmm.qemu.process import QemuProcess
from clawpot.vmm.snapshot import Snapshot, SnapshotIncompatible, read_manifest
from clawpot.vmm.spec import BackendKind, NetworkInterface, VmSpec
from clawpot.vmm.steps import Recipe

ACCEL_ENV = "CLAWPOT_QEMU_ACCEL"
BINARY_ENV = "CLAWPOT_QEMU_BIN"
VHOST_VSOCK = Path("/dev/vhost-vsock")
# CIDs 0-2 are reserved (hypervisor, local, host); keep clear of the 32-bit edge.
_CID_RANGE = (3, 2**31)


def find_qemu(explicit: Path | str | None = None) -> str | None:
    """The binary to run: explicit path, ``$CLAWPOT_QEMU_BIN``, then PATH."""
    candidate = str(explicit or os.environ.get(BINARY_ENV) or QEMU_BINARY)
    return shutil.which(candidate)


def vhost_vsock_usable(device: Path = VHOST_VSOCK) -> bool:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


class QemuBackend(VmmBackend):
    """Runs VMs under ``qemu-system-x86_64 -M microvm``.

    ``qmp_socket`` pins the QMP socket path (single-VM launches such as ``clawpot-driver --socket``).
    ``vsock``: True/False forces the agent transport; None picks vhost-vsock when the host has it.
    ``recipe`` is how its VMs boot (``boot.QEMU_BOOT``, or a variant of it).
    ``persistent_qmp``: each VM's QMP connection stays open between commands (``qmp.QmpControl``).
    ``run_as``: the account QEMU runs as (``confine``); None runs it as root (nothing but tests of the
    privileged path should want that).
    """

    kind = BackendKind.QEMU

    def __init__(
        self,
        binary: Path | str | None = None,
        *,
        accel: Accel | None = None,
        qmp_socket: Path | None = None,
        data: Path | None = None,
        vsock: bool | None = None,
        start_timeout: float = 10.0,
        die_with_parent: bool = True,
        recipe: Recipe[QemuProcess] = QEMU_BOOT,
        persistent_qmp: bool = False,
        run_as: str | None = VMM_USER,
    ) -> None:
        self._requested_binary = binary
        self.persistent_qmp = persistent_qmp
        self.run_as = run_as
        self.recipe = recipe
        self._binary = find_qemu(binary)
        self.qmp_socket = qmp_socket
        self.data = data
        self.vsock = vhost_vsock_usable() if vsock is None else vsock
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        env_accel = os.environ.get(ACCEL_ENV)
        if accel is None and env_accel:
            try:
                accel = Accel(env_accel.lower())
            except ValueError:
                raise VmmConfigError(f"{ACCEL_ENV}={env_accel!r}: expected kvm or tcg") from None
        self.accel = accel

    @property
    def binary(self) -> str:
        if self._binary is None:
            raise VmmUnsupported(self._missing())
        return self._binary

    def _missing(self) -> str:
        wanted = self._requested_binary or os.environ.get(BINARY_ENV) or QEMU_BINARY
        return f"{wanted} not found (install the Debian package qemu-system-x86, or set {BINARY_ENV})"

    def capabilities(self) -> Capabilities:
        if self._binary is None:
            return Capabilities(self.kind, available=False, detail=self._missing(), boots_guests=False)
        if self.accel is not None:
            accel = f"accelerator {self.accel.value} (forced)"
        elif (probe := cached_probe(self.data)) is not None:
            accel = f"accelerator {probe.summary()}"
        else:
            accel = "accelerator chosen by a KVM probe at the first start"
        transport = "vhost-vsock" if self.vsock else "virtio-serial"
        user = f"as {self.run_as}, chrooted" if self.run_as is not None else "as root"
        # TCG always works, so QEMU boots guests wherever it is installed.
        return Capabilities(
            self.kind,
            available=True,
            detail=f"{self._binary}; {accel}; agent over {transport}; {user}",
            boots_guests=True,
            features=Feature.PAUSE | Feature.SNAPSHOT | Feature.RESTORE,
        )

    async def choose_accel(self, spec: VmSpec) -> Accel:
        """The forced accelerator, else the probe's answer (booting the VM's own kernel and root image
        under KVM once per host kernel)."""
        if self.accel is None:
            probe = await probe_accelerator(
                spec.kernel, spec.root_drive.path, data=self.data, binary=self.binary
            )
            self.accel = probe.accel
        return self.accel

    def prepare(self, spec: VmSpec, vm_dir: Path) -> QemuProcess:
        if not spec.drives:
            raise VmmConfigError("a QEMU VM needs at least its root drive")
        return QemuProcess(
            spec,
            vm_dir,
            accel=self.accel or self.choose_accel,
            binary=self.binary,
            vsock_cid=_random_cid() if self.vsock else None,
            qmp_socket=self.qmp_socket,
            start_timeout=self.start_timeout,
            die_with_parent=self.die_with_parent,
            recipe=self.recipe,
            persistent_qmp=self.persistent_qmp,
            run_as=self.run_as,
        )

    def attach(self, record: AttachRecord) -> AttachedQemu:
        """A QEMU started by an earlier server, with pause and resume over its QMP socket."""
        adopted = AttachedQemu(record, self.kind, console=self.reattach_console(record.vm_dir))
        adopted.persistent_qmp = self.persistent_qmp
        return adopted

    def restore(
        self,
        snapshot: Path,
        vm_dir: Path,
        *,
        network_interfaces: tuple[NetworkInterface, ...] | None = None,
        recipe: Recipe[QemuProcess] = QEMU_RESTORE,
    ) -> QemuProcess:
        """A process (not started) that resumes the VM saved under ``snapshot`` in ``vm_dir``.

        Reads the manifest only (small); ``start()`` verifies every file first (``QEMU_RESTORE``).
        ``network_interfaces`` gives the clone its own TAPs (default: the snapshot's, only right when the
        snapshotted VM is gone). The agent channel is a fresh socket (or a new vsock CID).
        """
        manifest = read_manifest(snapshot)
        if manifest.backend is not self.kind:
            raise SnapshotIncompatible(f"snapshot {snapshot.name} was taken by {manifest.backend}, not qemu")
        snap = Snapshot(snapshot, manifest)
        try:
            accel = Accel(manifest.backend_options.get("accel", "tcg"))
        except ValueError:
            raise SnapshotIncompatible(f"snapshot {snapshot.name}: unknown accelerator") from None
        return QemuProcess(
            snap.spec_for(vm_dir, network_interfaces),
            vm_dir,
            accel=accel,
            binary=self.binary,
            vsock_cid=_random_cid() if self.vsock else None,
            start_timeout=self.start_timeout,
            die_with_parent=self.die_with_parent,
            recipe=recipe,
            restore_from=snap,
            persistent_qmp=self.persistent_qmp,
            run_as=self.run_as,
        )


def _random_cid() -> int:
    # Random rather than counted: CIDs are host-wide, shared with VMs that other processes start.
    low, high = _CID_RANGE
    return low + secrets.randbelow(high - low)
