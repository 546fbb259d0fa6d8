"""Typed bodies of the Firecracker API (v1.x), one model per resource.

Field names are Firecracker's own, so ``model_dump(exclude_none=True)`` is the wire body. Request models
forbid unknown fields (a typo fails here, not as a 400 from Firecracker); response models ignore them so
a newer Firecracker that adds fields still parses.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Firecracker's own bounds (src/vmm/src/vmm_config/machine_config.rs: MAX_SUPPORTED_VCPUS).
MAX_VCPUS = 32


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class BootSource(_Request):
    """PUT /boot-source."""

    kernel_image_path: Path
    boot_args: str | None = None
    initrd_path: Path | None = None


class CacheType(enum.StrEnum):
    UNSAFE = "Unsafe"
    WRITEBACK = "Writeback"


class Drive(_Request):
    """PUT /drives/{drive_id}."""

    drive_id: str
    path_on_host: Path
    is_root_device: bool
    is_read_only: bool
    partuuid: str | None = None
    cache_type: CacheType | None = None


class HugePages(enum.StrEnum):
    NONE = "None"
    TWO_MB = "2M"


class MachineConfiguration(_Request):
    """PUT /machine-config (GET returns the same shape)."""

    vcpu_count: int = Field(ge=1, le=MAX_VCPUS)
    mem_size_mib: int = Field(ge=1)
    smt: bool | None = None
    track_dirty_pages: bool | None = None
    huge_pages: HugePages | None = None


class MachineConfigurationInfo(_Response):
    vcpu_count: int
    mem_size_mib: int
    smt: bool = False
    track_dirty_pages: bool = False
    huge_pages: HugePages = HugePages.NONE


class NetworkInterface(_Request):
    """PUT /network-interfaces/{iface_id}."""

    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None


class Vsock(_Request):
    """PUT /vsock: a hybrid vsock device whose host side is the unix socket ``uds_path``."""

    guest_cid: int = Field(ge=3)
    uds_path: Path


class LogLevel(enum.StrEnum):
    OFF = "Off"
    ERROR = "Error"
    WARNING = "Warning"
    INFO = "Info"
    DEBUG = "Debug"
    TRACE = "Trace"


class Logger(_Request):
    """PUT /logger. ``log_path`` must already exist (a file or a fifo)."""

    log_path: Path
    level: LogLevel | None = None
    show_level: bool | None = None
    show_log_origin: bool | None = None
    module: str | None = None


class Metrics(_Request):
    """PUT /metrics. ``metrics_path`` must already exist (a file or a fifo)."""

    metrics_path: Path


class ActionType(enum.StrEnum):
    INSTANCE_START = "InstanceStart"
    SEND_CTRL_ALT_DEL = "SendCtrlAltDel"
    FLUSH_METRICS = "FlushMetrics"


class InstanceAction(_Request):
    """PUT /actions."""

    action_type: ActionType


class InstanceState(enum.StrEnum):
    NOT_STARTED = "Not started"
    RUNNING = "Running"
    PAUSED = "Paused"


class InstanceInfo(_Response):
    """GET /."""

    app_name: str
    id: str
    state: InstanceState
    vmm_version: str


class FirecrackerVersion(_Response):
    """GET /version."""

    firecracker_version: str


class ApiError(_Response):
    """Body of every non-2xx answer."""

    fault_message: str


class DriveInfo(_Response):
    drive_id: str
    path_on_host: Path
    is_root_device: bool
    is_read_only: bool | None = None


class BootSourceInfo(_Response):
    kernel_image_path: Path
    boot_args: str | None = None
    initrd_path: Path | None = None


class NetworkInterfaceInfo(_Response):
    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None


class VsockInfo(_Response):
    guest_cid: int
    uds_path: Path


class VmConfigInfo(_Response):
    """GET /vm/config: the configuration Firecracker holds, however it was given (API or config file)."""

    boot_source: BootSourceInfo | None = Field(default=None, alias="boot-source")
    drives: tuple[DriveInfo, ...] = ()
    machine_config: MachineConfigurationInfo | None = Field(default=None, alias="machine-config")
    network_interfaces: tuple[NetworkInterfaceInfo, ...] = Field(default=(), alias="network-interfaces")
    vsock: VsockInfo | None = None


class VmStateChange(enum.StrEnum):
    PAUSED = "Paused"
    RESUMED = "Resumed"


class Vm(_Request):
    """PATCH /vm: pause or resume the guest's vCPUs."""

    state: VmStateChange


class SnapshotType(enum.StrEnum):
    FULL = "Full"
    DIFF = "Diff"


class SnapshotCreate(_Request):
    """PUT /snapshot/create (the VM must be Paused)."""

    snapshot_type: SnapshotType = SnapshotType.FULL
    snapshot_path: Path
    mem_file_path: Path


class MemBackendType(enum.StrEnum):
    FILE = "File"
    UFFD = "Uffd"


class MemBackend(_Request):
    backend_type: MemBackendType
    backend_path: Path


class NetworkOverride(_Request):
    """A restored VM's NIC on another host TAP (Firecracker >= 1.12)."""

    iface_id: str
    host_dev_name: str


class SnapshotLoad(_Request):
    """PUT /snapshot/load, on a fresh firecracker (nothing configured but the logger)."""

    snapshot_path: Path
    mem_backend: MemBackend
    enable_diff_snapshots: bool | None = None
    resume_vm: bool | None = None
    network_overrides: tuple[NetworkOverride, ...] | None = None


class ConfigFile(_Request):
    """The whole VM for ``firecracker --config-file``: one file instead of one API call per resource."""

    boot_source: BootSource = Field(serialization_alias="boot-source")
    drives: tuple[Drive, ...] = ()
    machine_config: MachineConfiguration = Field(serialization_alias="machine-config")
    network_interfaces: tuple[NetworkInterface, ...] = Field(
        default=(), serialization_alias="network-interfaces"
    )
    vsock: Vsock | None = None
    logger: Logger | None = None
    metrics: Metrics | None = None
