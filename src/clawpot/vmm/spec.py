"""Backend-neutral description of one microVM: what to boot and with which devices."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class BackendKind(enum.StrEnum):
    FIRECRACKER = "firecracker"
    QEMU = "qemu"


@dataclass(frozen=True)
class Drive:
    """A virtio-blk disk. Drives appear in the guest as vda, vdb, ... in the order given."""

    drive_id: str
    path: Path
    read_only: bool


@dataclass(frozen=True)
class NetworkInterface:
    """A virtio-net device backed by an existing host TAP device (created by ``clawpot.network``)."""

    tap_name: str
    mac: str
    iface_id: str = "eth0"


@dataclass(frozen=True)
class VmSpec:
    """Everything a backend needs to launch a VM.

    ``boot_args`` is the complete kernel command line minus backend-specific additions (Firecracker
    appends its virtio-mmio devices itself; QEMU under TCG adds its timer options).
    ``drives[0]`` is the root device.
    """

    kernel: Path
    boot_args: str
    drives: tuple[Drive, ...]
    vcpus: int = 1
    memory_mib: int = 256
    network_interfaces: tuple[NetworkInterface, ...] = ()
    # Attach a host<->agent channel (vsock for Firecracker, virtio-serial or vhost-vsock for QEMU).
    agent_channel: bool = True
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def root_drive(self) -> Drive:
        return self.drives[0]
