"""``FirecrackerBackend``: finds the firecracker binary and hands out ``FirecrackerVmm`` handles."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from clawpot import paths
from clawpot.vmm.account import vmm_account
from clawpot.vmm.base import (
    AttachRecord,
    Capabilities,
    Feature,
    VmmBackend,
    VmmConfigError,
    VmmUnsupported,
)
from clawpot.vmm.firecracker.attached import AttachedFirecracker
from clawpot.vmm.firecracker.boot import FIRECRACKER_BOOT, FIRECRACKER_RESTORE, JAILED_BOOT, JAILED_RESTORE
from clawpot.vmm.firecracker.handle import FirecrackerVmm
from clawpot.vmm.firecracker.jail import Jail
from clawpot.vmm.snapshot import Snapshot, SnapshotIncompatible, read_manifest
from clawpot.vmm.spec import BackendKind, NetworkInterface, VmSpec
from clawpot.vmm.steps import Recipe

BINARY_ENV = "CLAWPOT_FIRECRACKER_BIN"
JAILER_ENV = "CLAWPOT_JAILER_BIN"
KVM_DEVICE = Path("/dev/kvm")
NOT_FOUND = f"firecracker not found (set {BINARY_ENV}, run `clawpot assets install`, or put it on PATH)"


def find_firecracker(explicit: Path | None = None) -> Path | None:
    """The binary to run: explicit path, ``$CLAWPOT_FIRECRACKER_BIN``, installed assets, then PATH."""
    if explicit is not None:
        return explicit
    env = os.environ.get(BINARY_ENV)
    if env:
        return Path(env)
    installed = paths.assets_dir() / "firecracker"
    if installed.is_file():
        return installed
    on_path = shutil.which("firecracker")
    return Path(on_path) if on_path else None


def find_jailer(explicit: Path | None = None, firecracker: Path | None = None) -> Path | None:
    """The jailer: explicit path, ``$CLAWPOT_JAILER_BIN``, beside the firecracker binary (they are
    released together), installed assets, then PATH."""
    if explicit is not None:
        return explicit
    env = os.environ.get(JAILER_ENV)
    if env:
        return Path(env)
    for candidate in (
        firecracker.parent / "jailer" if firecracker is not None else None,
        paths.assets_dir() / "jailer",
    ):
        if candidate is not None and candidate.is_file():
            return candidate
    on_path = shutil.which("jailer")
    return Path(on_path) if on_path else None


def firecracker_version(binary: Path) -> str:
    """``1.12.1`` for a firecracker binary (``--version`` prints ``Firecracker v1.12.1``)."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=True)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.removeprefix("Firecracker").strip().removeprefix("v")


class FirecrackerBackend(VmmBackend):
    """Runs VMs under firecracker.

    ``api_socket`` pins the API socket path (``clawpot-driver --socket``); it only makes sense for a
    backend that launches a single VM. Otherwise each VM's socket lives in its own directory.
    ``use_jailer`` (the default) runs every VM under Firecracker's jailer as ``clawpot-vmm``
    (``jail``); False is ``--no-jailer``, for development. ``recipe`` is how its VMs boot (default:
    ``boot.JAILED_BOOT``, or ``boot.FIRECRACKER_BOOT`` without the jailer).
    """

    kind = BackendKind.FIRECRACKER

    def __init__(
        self,
        binary: Path | None = None,
        *,
        api_socket: Path | None = None,
        api_timeout: float = 10.0,
        die_with_parent: bool = True,
        recipe: Recipe[FirecrackerVmm] | None = None,
        use_jailer: bool = True,
        jailer: Path | None = None,
    ) -> None:
        self._binary = find_firecracker(binary)
        self.use_jailer = use_jailer
        self._jailer = find_jailer(jailer, self._binary) if use_jailer else None
        self.recipe = recipe or (JAILED_BOOT if use_jailer else FIRECRACKER_BOOT)
        self.restore_recipe = JAILED_RESTORE if use_jailer else FIRECRACKER_RESTORE
        self.api_socket = api_socket
        self.api_timeout = api_timeout
        self.die_with_parent = die_with_parent

    @property
    def binary(self) -> Path:
        if self._binary is None:
            raise VmmUnsupported(NOT_FOUND)
        return self._binary

    def capabilities(self) -> Capabilities:
        problem = self._problem()
        if problem:
            return Capabilities(self.kind, available=False, detail=problem)
        jailer = f", jailed by {self._jailer}" if self._jailer is not None else ", not jailed (--no-jailer)"
        return Capabilities(
            self.kind,
            available=True,
            detail=f"firecracker {self.binary}{jailer}",
            features=Feature.PAUSE | Feature.SNAPSHOT | Feature.RESTORE,
        )

    def _problem(self) -> str | None:
        if self._binary is None:
            return NOT_FOUND
        if not self._binary.is_file():
            return f"firecracker binary {self._binary} does not exist"
        if not os.access(self._binary, os.X_OK):
            return f"firecracker binary {self._binary} is not executable"
        if not KVM_DEVICE.exists():
            return f"{KVM_DEVICE} does not exist (firecracker needs KVM)"
        if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
            return f"{KVM_DEVICE} is not readable and writable by this user"
        if self.use_jailer:
            if self._jailer is None or not self._jailer.is_file():
                return f"jailer not found (set {JAILER_ENV}, run `clawpot assets install`, or --no-jailer)"
            try:
                vmm_account()
            except VmmConfigError as exc:
                return str(exc)
        return None

    def attach(self, record: AttachRecord) -> AttachedFirecracker:
        """A firecracker an earlier server started: its console and its metrics FIFO read again."""
        return AttachedFirecracker(record, self.kind, console=self.reattach_console(record.vm_dir))

    def jail_for(self, vm_dir: Path) -> Jail | None:
        """The jail of a VM in ``vm_dir`` (None without the jailer)."""
        if not self.use_jailer:
            return None
        assert self._jailer is not None, "capabilities checked first"
        return Jail.for_vm(self._jailer, self.binary, vm_dir, vmm_account())

    def prepare(self, spec: VmSpec, vm_dir: Path) -> FirecrackerVmm:
        problem = self._problem()
        if problem:
            raise VmmUnsupported(problem)
        return FirecrackerVmm(
            self.binary,
            spec,
            vm_dir,
            api_socket=self.api_socket,
            api_timeout=self.api_timeout,
            die_with_parent=self.die_with_parent,
            recipe=self.recipe,
            jail=self.jail_for(vm_dir),
        )

    def restore(
        self,
        snapshot: Path,
        vm_dir: Path,
        *,
        network_interfaces: tuple[NetworkInterface, ...] | None = None,
        recipe: Recipe[FirecrackerVmm] | None = None,
    ) -> FirecrackerVmm:
        """A firecracker (not started) that loads the snapshot into ``vm_dir`` and resumes it.
        ``network_interfaces``: the clone's own TAPs (``network_overrides``)."""
        problem = self._problem()
        if problem:
            raise VmmUnsupported(problem)
        manifest = read_manifest(snapshot)
        if manifest.backend is not self.kind:
            raise SnapshotIncompatible(
                f"snapshot {snapshot.name} was taken by {manifest.backend}, not firecracker"
            )
        snap = Snapshot(snapshot, manifest)
        return FirecrackerVmm(
            self.binary,
            snap.spec_for(vm_dir, network_interfaces),
            vm_dir,
            api_timeout=self.api_timeout,
            die_with_parent=self.die_with_parent,
            recipe=recipe or self.restore_recipe,
            restore_from=snap,
            jail=self.jail_for(vm_dir),
        )
