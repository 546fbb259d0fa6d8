"""One directory per VM: sockets, logs, serial console, writable disk and ``metadata.json``.

    <vms>/<id>/metadata.json   who runs the VM, its state and sizes (read by ``clawpot-driver status``)
    <vms>/<id>/...             backend files (API/vsock sockets, VMM log, serial.log) and scratch.ext4

Deleting the VM deletes the directory. Names are short on purpose: unix socket paths inside it must
fit the 108-byte sun_path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from clawpot import paths
from clawpot.vm.errors import VmError
from clawpot.vm.sockets import check_socket_path

METADATA_NAME = "metadata.json"
SCRATCH_NAME = "scratch.ext4"
ID_BYTES = 4  # 8 hex characters: short socket paths, and collisions are caught by the exclusive mkdir
# Room kept for socket names inside a VM directory; Firecracker's vsock adds "_<port>" to its socket.
SOCKET_NAME_RESERVE = len("vsock.sock_4294967295")


class VmMetadata(BaseModel):
    """What another process needs to find and describe a running VM."""

    model_config = ConfigDict(extra="ignore")

    id: str
    backend: str
    state: str
    reason: str = ""
    vcpus: int
    memory_mib: int
    kernel: str
    rootfs: str
    boot_args: str
    created_at: float
    started_at: float | None = None
    # The process that manages the VM (clawpot-driver or the server), with its start time against PID reuse.
    owner_pid: int
    owner_start_ticks: int | None = None
    vmm_pid: int | None = None
    control_socket: str | None = None
    serial_log: str | None = None


def new_vm_id() -> str:
    return secrets.token_hex(ID_BYTES)


class VmDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, vm_id: str | None = None, root: Path | None = None) -> VmDirectory:
        """Make the directory (exclusively: an existing one is an error, never reused)."""
        root = root if root is not None else paths.vms_dir()
        path = root / (vm_id or new_vm_id())
        check_socket_path(path / "x", reserve=SOCKET_NAME_RESERVE - 1)
        root.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            raise VmError(f"VM directory {path} already exists") from None
        return cls(path)

    @property
    def id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA_NAME

    @property
    def scratch_disk(self) -> Path:
        return self.path / SCRATCH_NAME

    def write_metadata(self, metadata: VmMetadata) -> None:
        # Atomic: a reader never sees half a file.
        tmp = self.path / f".{METADATA_NAME}.{os.getpid()}.tmp"
        tmp.write_text(metadata.model_dump_json(indent=2))
        tmp.replace(self.metadata_path)

    def read_metadata(self) -> VmMetadata | None:
        return read_metadata(self.metadata_path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def exists(self) -> bool:
        return self.path.is_dir()


def read_metadata(path: Path) -> VmMetadata | None:
    try:
        return VmMetadata.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None


def find_by_control_socket(socket_path: Path, root: Path | None = None) -> VmDirectory | None:
    """The VM directory whose metadata names ``socket_path`` as its control socket."""
    root = root if root is not None else paths.vms_dir()
    wanted = os.path.abspath(socket_path)
    with contextlib.suppress(OSError):
        for entry in sorted(root.iterdir(), key=_mtime, reverse=True):
            meta = read_metadata(entry / METADATA_NAME)
            if meta is not None and meta.control_socket == wanted:
                return VmDirectory(entry)
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
