"""The node's named snapshots: one directory each under ``<data>/snapshots/<name>/``, in the layout and
with the manifest of ``clawpot.vmm.snapshot`` (written atomically there: a snapshot is complete or
absent; partial ones are hidden ``.<name>.partial-*`` directories, never listed).

This module only finds, describes and removes them; taking one is the VM handle's job
(``Vm.snapshot``) and restoring one the launch's (``launch.restore``). Which VMs use a snapshot is
the node's to say (their records name it).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from clawpot import errors
from clawpot.vmm.snapshot import Manifest, SnapshotError, read_manifest
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    backend: BackendKind
    vcpus: int
    memory_mib: int
    disk_mib: int  # its writable layer's size: a restore keeps it (0: it has none)
    created_at: float
    size_bytes: int  # allocated on disk (the memory file is sparse: holes cost nothing)
    manifest: Manifest


class SnapshotCatalog:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        """Where snapshot ``name`` lives (the name is validated by the service: no '/', not hidden)."""
        return self.root / name

    def exists(self, name: str) -> bool:
        return self.path(name).is_dir()

    def info(self, name: str) -> SnapshotInfo:
        """NOT_FOUND when there is no such snapshot, FAILED_PRECONDITION when its manifest is unusable."""
        directory = self.path(name)
        if not directory.is_dir():
            raise errors.NotFound(f"snapshot {name} not found")
        try:
            manifest = read_manifest(directory)
        except SnapshotError as exc:
            raise errors.FailedPrecondition(str(exc)) from exc
        return SnapshotInfo(
            name=name,
            backend=manifest.backend,
            vcpus=manifest.spec.vcpus,
            memory_mib=manifest.spec.memory_mib,
            disk_mib=disk_mib(manifest),
            created_at=manifest.created_at,
            size_bytes=_allocated(directory),
            manifest=manifest,
        )

    def list(self) -> list[SnapshotInfo]:
        """Every complete snapshot, oldest first; one whose manifest cannot be read is logged, not shown
        (``info`` on its name says what is wrong with it)."""
        found = []
        for directory in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if directory.name.startswith(".") or not directory.is_dir():
                continue
            try:
                found.append(self.info(directory.name))
            except errors.ServerError as exc:
                log.warning("snapshot %s not listed: %s", directory.name, exc)
        return sorted(found, key=lambda s: (s.created_at, s.name))

    def remove(self, name: str) -> None:
        """Remove snapshot ``name``: renamed away first (one step: it is gone for every reader), then its
        files deleted. A crash in between leaves a hidden directory, never a half snapshot."""
        directory = self.path(name)
        doomed = self.root / f".{name}.deleting-{secrets.token_hex(4)}"
        try:
            os.rename(directory, doomed)
        except FileNotFoundError:
            raise errors.NotFound(f"snapshot {name} not found") from None
        shutil.rmtree(doomed, ignore_errors=True)

    def sweep(self) -> None:
        """Remove what a crash left: hidden partial or half-deleted directories. Only at node start,
        when no snapshot is being written (the node holds the data directory's lock)."""
        for entry in self.root.iterdir() if self.root.is_dir() else []:
            if entry.name.startswith("."):
                log.info("removing leftover %s", entry)
                shutil.rmtree(entry, ignore_errors=True)


def _allocated(directory: Path) -> int:
    total = 0
    for entry in directory.iterdir():
        try:
            total += entry.stat().st_blocks * 512
        except OSError:
            continue
    return total


def disk_mib(manifest: Manifest) -> int:
    """The size of the snapshot's writable layer in MiB (its copied drives; 0 when it has none)."""
    sizes = [
        manifest.files[drive.file].size
        for drive in manifest.spec.drives
        if not drive.read_only and drive.file is not None and drive.file in manifest.files
    ]
    return sum(sizes) // (1024 * 1024)
